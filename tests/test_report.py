"""The HTML report: sections per method, embedded figures only, escaping, numbers, side effects."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import matplotlib
import numpy as np
import pytest

import bayesresnet as brn
from bayesresnet.export import load
from bayesresnet.report import SECTIONS, compare_report, summary_rows

pytestmark = pytest.mark.arviz

DATA_URI = re.compile(r"data:image/png;base64,[A-Za-z0-9+/=]+")


class _Page(HTMLParser):
    """Collects headings, images, links and every tag name of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.sections: list[str] = []
        self.images: list[str] = []
        self.links: list[str] = []
        self.spans: list[str] = []
        self.cells: list[list[str]] = []
        self._in_td = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "h2":
            self.sections.append(attrs.get("id", ""))
        elif tag == "img":
            self.images.append(attrs.get("src", ""))
        elif tag == "a":
            self.links.append(attrs.get("href", ""))
        elif tag == "span":
            self.spans.append(attrs.get("class", ""))
        elif tag == "tr":
            self.cells.append([])
        elif tag in ("td", "th"):
            self._in_td = True
            self.cells[-1].append("")

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self._in_td = False

    def handle_data(self, data):
        if self._in_td and self.cells:
            self.cells[-1][-1] += data


def parse(path) -> tuple[_Page, str]:
    text = path.read_text(encoding="utf-8")
    page = _Page()
    page.feed(text)
    return page, text


def assert_self_contained(page: _Page, text: str) -> None:
    assert "<script" not in text.lower()
    assert "<link" not in text.lower()
    assert "http" not in DATA_URI.sub("", text).lower()
    assert page.images and all(src.startswith("data:image/png;base64,") for src in page.images)
    assert all(not re.match(r"^[a-z]+:", href) for href in page.links)


@pytest.fixture(scope="module")
def toy():
    x, y = brn.data.cubic(16, seed=0)
    x_test, y_test = brn.data.cubic(60, seed=1)
    net = brn.ResNet(in_dim=1, out_dim=1, width=4, depth=3, basis=brn.Linear())
    return brn.BayesianResNet(net), x, y, x_test, y_test


@pytest.fixture(scope="module")
def nuts_post(toy):
    model, x, y, _, _ = toy
    method = brn.NUTS(num_samples=15, num_warmup=15, chains=2, max_tree_depth=3, init_steps=30)
    return brn.fit(model, x, y, method=method, seed=0, progress=False)


@pytest.fixture(scope="module")
def vi_post(toy):
    model, x, y, _, _ = toy
    return brn.fit(model, x, y, method=brn.MeanField(steps=60, num_draws=50), seed=0,
                   progress=False)


@pytest.fixture(scope="module")
def ensemble_post(toy):
    model, x, y, _, _ = toy
    return brn.fit(model, x, y, method=brn.Ensemble(members=3, steps=60), seed=0,
                   progress=False)


@pytest.fixture(scope="module")
def nuts_report(nuts_post, toy, tmp_path_factory):
    _, _, _, x_test, y_test = toy
    out = tmp_path_factory.mktemp("nuts_report")
    path = brn.report(nuts_post, out, x_test=x_test, y_test=y_test)
    assert path == out / "index.html"
    return path, *parse(path)


def test_nuts_report_sections_and_figures(nuts_post, nuts_report, toy):
    _, _, _, x_test, _ = toy
    path, page, text = nuts_report
    assert page.sections == ["run", "diagnostics", "trace", "energy", "predictions", "metrics",
                             "calibration", "stability", "files"]
    assert set(page.sections) <= set(SECTIONS)
    # trace + rank (two chains) + energy + band + calibration + stability
    assert len(page.images) == 6
    assert text.count('src="data:image/png;base64,') == 6
    assert_self_contained(page, text)
    # The saved run is the same posterior.
    again = load(path.parent / "posterior.nc")
    np.testing.assert_array_equal(again.predict(x_test).mean, nuts_post.predict(x_test).mean)


def test_diagnostics_marks_match_diagnose(nuts_post, nuts_report):
    _, page, _ = nuts_report
    table = nuts_post.diagnose().table
    assert page.spans.count("pass") + page.spans.count("fail") >= len(table)
    marks = [row[-1] for row in page.cells if row and row[0] in set(table["check"])]
    assert len(marks) == len(table)
    assert (table["rule"] == "info").sum() == 1  # the R-hat the run's rule does not judge
    for mark, passed, rule in zip(marks, table["passed"], table["rule"], strict=True):
        if rule == "info":  # a figure that is reported, not checked: neither pass nor FAIL
            assert mark == "info"
            continue
        assert ("pass" in mark) == bool(passed) and ("FAIL" in mark) == (not passed)


def test_metrics_table_holds_the_metrics(nuts_post, nuts_report, toy):
    _, _, _, x_test, y_test = toy
    _, page, _ = nuts_report
    rows = {row[0]: row for row in page.cells if row and row[0] in ("train", "test")}
    pred = nuts_post.predict(x_test)
    expected = [len(x_test), brn.metrics.rmse(pred, y_test), brn.metrics.nll(pred, y_test),
                brn.metrics.coverage(pred, y_test), brn.metrics.interval_width(pred),
                brn.metrics.crps(pred, y_test)]
    shown = [float(v) for v in rows["test"][1:]]
    np.testing.assert_allclose(shown, expected, rtol=5e-4)
    assert "train" in rows


def test_vi_report_has_elbo_and_no_test_sections(vi_post, tmp_path):
    page, text = parse(brn.report(vi_post, tmp_path))
    assert page.sections == ["run", "diagnostics", "trace", "elbo", "predictions", "metrics",
                             "stability", "files"]
    assert len(page.images) == 4  # trace, ELBO, band, stability (one chain: no rank plot)
    assert_self_contained(page, text)
    assert [row[0] for row in page.cells if row and row[0] in ("train", "test")] == ["train"]


def test_ensemble_and_map_reports_show_losses(ensemble_post, toy, tmp_path):
    model, x, y, x_test, y_test = toy
    page, _ = parse(brn.report(ensemble_post, tmp_path / "e", x_test=x_test, y_test=y_test))
    assert "loss" in page.sections and "trace" in page.sections
    map_post = brn.fit(model, x, y, method=brn.MAP(steps=40), seed=0, progress=False)
    page, text = parse(brn.report(map_post, tmp_path / "m", x_test=x_test, y_test=y_test))
    # One draw: nothing to trace.
    assert page.sections == ["run", "diagnostics", "loss", "predictions", "metrics",
                             "calibration", "stability", "files"]
    assert len(page.images) == 4
    assert_self_contained(page, text)


def test_several_inputs_and_outputs_give_parity_plots(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(25, 3))
    y = np.stack([x[:, 0] - x[:, 1], np.sin(x[:, 2])], axis=1) + 0.1 * rng.normal(size=(25, 2))
    net = brn.ResNet(in_dim=3, out_dim=2, width=4, depth=2, basis=brn.Constant())
    post = brn.fit(brn.BayesianResNet(net), x, y, method=brn.Ensemble(members=2, steps=40),
                   seed=1, progress=False)
    post.extra["columns"] = {"inputs": ["a", "b", "c"], "targets": ["<u>", "v & w"]}
    page, text = parse(brn.report(post, tmp_path, x_test=x[:5], y_test=y[:5]))
    assert "predictions" in page.sections and "calibration" in page.sections
    assert "&lt;u&gt;" in text and "v &amp; w" in text and "<u>" not in text
    assert_self_contained(page, text)


def test_every_string_is_escaped(ensemble_post, tmp_path):
    title = '<script>alert("x")</script> & <b>'
    _, text = parse(brn.report(ensemble_post, tmp_path, title=title))
    assert "<script" not in text and "<b>" not in text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;b&gt;" in text


def test_matplotlib_state_is_left_alone(ensemble_post, tmp_path):
    import matplotlib.pyplot as plt

    backend = matplotlib.get_backend()
    figures = plt.get_fignums()
    rc = dict(matplotlib.rcParams)
    brn.report(ensemble_post, tmp_path)
    assert matplotlib.get_backend() == backend
    assert plt.get_fignums() == figures
    assert dict(matplotlib.rcParams) == rc


def test_bad_arguments(ensemble_post, toy, tmp_path):
    _, _, _, x_test, y_test = toy
    with pytest.raises(ValueError, match="together"):
        brn.report(ensemble_post, tmp_path, x_test=x_test)
    with pytest.raises(ValueError, match="Posterior"):
        brn.report("run.nc", tmp_path)
    with pytest.raises(ValueError, match="y_test"):
        brn.report(ensemble_post, tmp_path, x_test=x_test, y_test=y_test[:-1])
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="not a folder"):
        brn.report(ensemble_post, blocker)


def test_compare_report_and_summary_rows(nuts_post, vi_post, ensemble_post, toy, tmp_path):
    _, _, _, x_test, y_test = toy
    runs = {"nuts": nuts_post, "meanfield": vi_post, "ensemble": ensemble_post}
    rows = summary_rows(runs, x_test, y_test)
    assert [r["name"] for r in rows] == list(runs)
    assert [r["convergence"] for r in rows] == ["R-hat", "k-hat", "spread/noise"]
    for r, post in zip(rows, runs.values(), strict=True):
        pred = post.predict(x_test)
        assert r["data"] == "test"
        assert r["rmse"] == pytest.approx(brn.metrics.rmse(pred, y_test))
        assert r["diagnostics_ok"] == post.diagnose().ok
    path = compare_report(runs, tmp_path, x_test, y_test)
    page, text = parse(path)
    assert page.sections == ["metrics", "predictions", "files"]
    assert_self_contained(page, text)
    for name in runs:
        assert f"{name}/index.html" in page.links
        assert (tmp_path / name / "index.html").is_file()
        assert (tmp_path / name / "posterior.nc").is_file()
    with pytest.raises(ValueError, match="run name"):
        compare_report({"../x": nuts_post}, tmp_path)


def test_each_prediction_is_computed_once_per_page(nuts_post, ensemble_post, toy, tmp_path,
                                                   monkeypatch):
    import importlib

    report_module = importlib.import_module("bayesresnet.report")
    _, _, _, x_test, y_test = toy
    calls: list[tuple[int, tuple[int, ...]]] = []
    original = brn.Posterior.predict

    def counting_predict(self, x, *args, **kwargs):
        calls.append((id(self), np.shape(x)))
        return original(self, x, *args, **kwargs)

    monkeypatch.setattr(brn.Posterior, "predict", counting_predict)
    runs = {"nuts": nuts_post, "ensemble": ensemble_post}
    compare_report(runs, tmp_path, x_test, y_test)
    # Per run: the test inputs, the training inputs and the plotting grid, once each, although
    # the comparison table, the bands and each run's own page all ask for them.
    assert sorted(calls) == sorted(set(calls))
    assert len(calls) == 3 * len(runs)
    assert getattr(report_module._SCOPE, "store", None) is None  # nothing outlives the page
    calls.clear()
    compare_report(runs, tmp_path, x_test, y_test)
    assert len(calls) == 3 * len(runs)  # a new page computes afresh
