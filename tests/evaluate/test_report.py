"""`rfgan report`: the page, rendered in a real headless Chromium, shows every image and every metric of the runs."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess

import pytest
from conftest import make_gan_run, one_line_error

from rfgan.cli import main
from rfgan.config import preset
from rfgan.evaluate.table import BY_KEY, mean_se_text

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# Added to a copy of the page: once everything has loaded, the body records how many <img> there are and how many
# failed to decode (a broken data URI loads "complete" with naturalWidth 0).
CHECK = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  const broken = images.filter((i) => !(i.complete && i.naturalWidth > 0)).map((i) => i.alt);
  document.body.setAttribute("data-images", images.length);
  document.body.setAttribute("data-broken", JSON.stringify(broken));
});
</script>"""


def rendered(page, tmp_path) -> str:
    """The page's DOM after Chromium loaded it, with the CHECK results on <body>."""
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is needed for the report test: apt-get install -y chromium (.ci/run does)")
        pytest.skip("Chromium is not installed (apt-get install -y chromium; .ci/run installs it)")
    checked = tmp_path / "checked.html"
    checked.write_text(page.read_text().replace("</body>", CHECK + "</body>"))
    args = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox cannot start
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--dump-dom",
        checked.as_uri(),
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "data-images" in done.stdout, done.stderr[-2000:]
    return done.stdout


def test_report_shows_every_image_and_metric_in_a_browser(tiny_dataset, feature_weights, tmp_path, capsys):
    ridge = tmp_path / "ridge"
    assert main(["baseline", "--data", str(tiny_dataset), "--out", str(ridge), "--json"]) == 0
    gan = make_gan_run(tmp_path / "rfgan", tiny_dataset)
    masked_cfg = preset("tiny").with_overrides({"data.mask": True, "loss.lambda_adv": 0.0})
    masked = make_gan_run(tmp_path / "rfmasked", tiny_dataset, cfg=masked_cfg)
    for run in (gan, masked):
        assert main(["eval", "--run", str(run), "--data", str(tiny_dataset)]) == 0
    page = tmp_path / "page.html"
    capsys.readouterr()
    assert main(["report", "--run", str(ridge), "--compare", str(masked), str(gan), "--out", str(page)]) == 0
    assert capsys.readouterr().out == f"wrote {page}\n"
    text = page.read_text()
    # Self-contained: every image inlined, nothing fetched from anywhere.
    assert set(re.findall(r'src="([a-z]+):', text)) == {"data"} and "http" not in text

    dom = rendered(page, tmp_path)
    n_images = int(re.search(r'data-images="(\d+)"', dom).group(1))
    assert re.search(r'data-broken="\[\]"', dom), re.search(r'data-broken="[^"]*"', dom).group(0)
    # 8 validation images as target | ridge | rfmasked | rfgan, and the curves of the two GAN runs (ridge has none).
    assert n_images == 8 * 4 + 2
    assert 'alt="curves rfgan"' in dom and 'alt="curves rfmasked"' in dom and 'alt="curves ridge"' not in dom

    tables = {run.name: json.loads((run / "eval_val.json").read_text())["metrics"] for run in (ridge, masked, gan)}
    assert {"psnr_masked", "corr_alexnet_fc8"} <= set(tables["rfmasked"])
    for key in tables["rfmasked"]:
        row = re.search(rf'<tr data-metric="{key}">(.*?)</tr>', dom, flags=re.S)
        assert row is not None, key
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row.group(1))
        assert cells[0] == BY_KEY[key].label
        # In the order the runs were given; "–" where a run has no such metric (the ridge has no RF mask).
        assert cells[1:] == [mean_se_text(key, t[key]) if key in t else "–" for t in tables.values()], key
        assert 'class="best"' in row.group(1), key
    # Each run's resolved config.
    assert '"model": "ridge"' in dom and '"lambda_adv": 0.0' in dom and '"mask": true' in dom


def test_runs_not_evaluated_alike_are_refused_and_no_page_is_written(tiny_dataset, tmp_path, capsys):
    gan = make_gan_run(tmp_path / "gan", tiny_dataset, steps=0)
    page = tmp_path / "page.html"
    assert main(["report", "--run", str(gan), "--out", str(page)]) == 2
    assert f"rfgan eval --run {gan} --data DATA" in one_line_error(capsys, "report")
    other = tmp_path / "copy"
    shutil.copytree(tiny_dataset, other)
    ridge = tmp_path / "ridge"
    assert main(["baseline", "--data", str(tiny_dataset), "--out", str(ridge), "--no-feature-metrics"]) == 0
    assert main(["eval", "--run", str(gan), "--data", str(other), "--no-feature-metrics"]) == 0
    capsys.readouterr()
    assert main(["report", "--run", str(ridge), "--compare", str(gan), "--out", str(page)]) == 2
    assert "evaluate them on the same dataset split" in one_line_error(capsys, "report")
    assert not page.exists()


def test_an_eval_table_naming_another_runs_checkpoint_is_refused(tiny_dataset, tmp_path, capsys):
    """Third audit: eval_val.json's "checkpoint" edited to a ridge run's made the page show the ridge images under
    this run's name."""
    ridge = tmp_path / "ridge"
    argv = ["--data", str(tiny_dataset), "--no-feature-metrics"]
    assert main(["baseline", *argv, "--out", str(ridge)]) == 0
    gan = make_gan_run(tmp_path / "gan", tiny_dataset, steps=0)
    assert main(["eval", "--run", str(gan), *argv]) == 0
    table = json.loads((gan / "eval_val.json").read_text())
    (gan / "eval_val.json").write_text(json.dumps({**table, "checkpoint": str(ridge / "checkpoint_ridge")}))
    page = tmp_path / "page.html"
    assert main(["report", "--run", str(gan), "--out", str(page)]) == 2
    assert "which is not one of" in one_line_error(capsys, "report") and not page.exists()
    # A run folder moved since its eval: the table's old path names a checkpoint of the same name in the run.
    moved = tmp_path / "moved"
    gan.rename(moved)
    (moved / "eval_val.json").write_text(json.dumps(table))
    assert main(["report", "--run", str(moved), "--out", str(page)]) == 0
    # A value the page would show that is not a number (third audit: a traceback in the table's rounding).
    bad = {**table, "metrics": {**table["metrics"], "psnr": {**table["metrics"]["psnr"], "mean": "high"}}}
    (moved / "eval_val.json").write_text(json.dumps(bad))
    assert main(["report", "--run", str(moved), "--out", str(tmp_path / "p2.html")]) == 2
    assert "metrics.psnr.mean is 'high', not a number" in one_line_error(capsys, "report")


def test_the_page_gives_each_runs_paired_differences_against_the_first(tiny_dataset, tmp_path, capsys):
    """Image by image: eval keeps each image's values, and the page shows the mean ± SE of the differences against
    the first run and the share of images where the run is better."""
    import math

    argv = ["--data", str(tiny_dataset), "--no-feature-metrics"]
    ridge = tmp_path / "ridge"
    assert main(["baseline", *argv, "--out", str(ridge)]) == 0
    gan = make_gan_run(tmp_path / "gan", tiny_dataset)
    assert main(["eval", "--run", str(gan), *argv]) == 0
    a, b = (json.loads((run / "eval_val.json").read_text()) for run in (ridge, gan))
    for table in (a, b):  # the per-image values are those the table's means come from
        for key, value in table["metrics"].items():
            assert math.isclose(sum(table["per_image"][key]) / value["n"], value["mean"], rel_tol=1e-5, abs_tol=1e-6)
    page = tmp_path / "page.html"
    assert main(["report", "--run", str(ridge), "--compare", str(gan), "--out", str(page)]) == 0
    text = page.read_text()
    assert "Paired differences against ridge" in text
    d = [y - x for x, y in zip(a["per_image"]["ssim"], b["per_image"]["ssim"])]
    mean = sum(d) / len(d)
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1) / len(d))
    better, worse = sum(x > 0 for x in d) / len(d), sum(x < 0 for x in d) / len(d)
    row = re.search(r'<tr data-paired="ssim">(.*?)</tr>', text).group(1)
    assert f"{mean:+.4f} ± {se:.4f}" in row and f"(better on {better:.0%}, worse on {worse:.0%})" in row


def test_runs_evaluated_on_a_dataset_before_it_was_remade_are_refused(tiny_dataset, tmp_path, capsys):
    """Fourth audit: a run evaluated on DATA, DATA re-made (other images, same path), another run evaluated on it:
    report compared their tables (and image-by-image differences) over different images."""
    from conftest import TINY, make_synth

    data = tmp_path / "data"
    make_synth(data)
    argv = ["--data", str(data), "--no-feature-metrics"]
    first = tmp_path / "ridge1"
    assert main(["baseline", *argv, "--out", str(first)]) == 0
    make_synth(data, dataclasses.replace(TINY, seed=7), overwrite=True)
    second = tmp_path / "ridge2"
    assert main(["baseline", *argv, "--out", str(second)]) == 0
    page = tmp_path / "page.html"
    assert main(["report", "--run", str(second), "--compare", str(first), "--out", str(page)]) == 2
    assert "as it was before it was re-made" in one_line_error(capsys, "report") and not page.exists()
