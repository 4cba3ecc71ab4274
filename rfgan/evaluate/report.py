"""`rfgan report`: one self-contained HTML page that compares runs (GANs, the ridge baseline): the same validation
images as target | each run's reconstruction, the standard table side by side (mean ± SE, the best of each row
marked), each run's training curves and resolved config. Images are inlined as base64 data URIs, so the page is one
file that opens anywhere, offline.
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs
import torch
from torchvision.transforms.functional import to_pil_image

from rfgan import __version__, outputs, storage
from rfgan.checkpoint import CURVES_FILE, STATE_FILE, Accept
from rfgan.data.format import DatasetInfo, check_outside_dataset, iter_split, read_info, read_rfs, to_tensors
from rfgan.errors import DataError
from rfgan.evaluate import learned
from rfgan.evaluate.inference import Decoder, eval_file, load_decoder
from rfgan.evaluate.table import METRICS, feature_nets_text, mean_se_text, paired

TITLE = "<title>rfgan report</title>"
# What `rfgan report --out` may replace: a page it wrote (its title), nothing else (a dataset's metadata.json, say).
REPORT_PAGE = outputs.Kind("an rfgan report page", lambda path: TITLE.encode() in outputs.head(path))
GRID_IMAGES = 8
DISPLAY_PX = 128  # images are shown at least this wide, pixelated rather than blurred

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { padding: 4px 10px; border-bottom: 1px solid #ddd; text-align: right; }
th:first-child, td:first-child { text-align: left; }
td.best { background: #d9f2d9; font-weight: bold; }
table.grid td { padding: 2px; border: none; }
table.grid img { image-rendering: pixelated; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; }
.note { color: #666; }
"""


@dataclass
class _Run:
    path: str
    name: str
    evaluation: dict[str, Any]
    decoder: Decoder
    curves: bytes | None


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _image_uri(image: torch.Tensor) -> str:
    """(C, H, W) in [0, 1] → a PNG data URI."""
    buffer = io.BytesIO()
    to_pil_image(image.clamp(0, 1)).save(buffer, format="PNG")
    return _png_uri(buffer.getvalue())


def _read_run(run: str, split: str, device: str) -> tuple[str, dict[str, Any], Decoder, bytes | None]:
    fs, where = storage.filesystem(run)
    kind = fs.get_file_info(where).type
    if kind != pafs.FileType.Directory:
        what = "is a file" if kind == pafs.FileType.File else "does not exist"
        raise DataError(
            f"--run {run} {what}; give a run directory, the --out of rfgan train or rfgan baseline (it holds "
            "checkpoint folders and eval_val.json)."
        )
    path = eval_file(run, split)
    if not storage.is_file(path):
        raise DataError(
            f"{run} has no {path.rsplit('/', 1)[-1]}: evaluate it first (rfgan eval --run {run} --data DATA"
            f"{'' if split == 'val' else ' --split ' + split}); rfgan baseline writes it for a ridge run."
        )
    try:
        evaluation = json.loads(storage.read_bytes(path))
        for key, value in evaluation["metrics"].items():
            # Every value the page shows is a number (or null, undefined): an edited table fails here, not in render.
            for field in ("mean", "se"):
                if not _number_or_null(value[field]):
                    raise TypeError(f"metrics.{key}.{field} is {value[field]!r}, not a number")
            int(value["n"])
        evaluation["metrics"]["psnr"]["mean"]
        for key, values in evaluation.get("per_image", {}).items():
            if not all(_number_or_null(x) for x in values):
                raise TypeError(f"per_image.{key} holds a value that is not a number")
            if key in evaluation["metrics"] and len(values) != evaluation["metrics"][key]["n"]:
                raise ValueError(f"per_image.{key} has {len(values)} values for n = {evaluation['metrics'][key]['n']}")
        if "per_image" in evaluation and not isinstance(evaluation["image_ids"], list):
            raise TypeError("image_ids is not a list")
        for field in ("data", "split", "checkpoint"):
            if not isinstance(evaluation[field], str):
                raise TypeError(f"{field} is {evaluation[field]!r}, not text")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise DataError(
            f"{path}: not a table of this rfgan's eval ({type(e).__name__}: {e}); run rfgan eval on the run again."
        ) from e
    curves = storage.join(run, CURVES_FILE)
    return (
        storage.split(run)[1],
        evaluation,
        load_decoder(_checkpoint_of(run, path, evaluation["checkpoint"]), device),
        storage.read_bytes(curves) if storage.is_file(curves) else None,
    )


def _number_or_null(x: Any) -> bool:
    """A JSON number or null (a bool is not one, though Python counts it an int)."""
    return x is None or (isinstance(x, (int, float)) and not isinstance(x, bool))


def _checkpoint_of(run: str, path: str, checkpoint: str) -> str:
    """The checkpoint of `run` that its eval table names: the one of that name in `run` (the table keeps the path it
    had when evaluated; the run folder may have moved since). A table naming no checkpoint of `run` is refused: its
    images would be another run's shown under this one's name."""
    name = storage.split(checkpoint)[1]
    here = storage.join(run, name)
    if name and storage.is_file(storage.join(here, STATE_FILE)):
        return here
    raise DataError(
        f"{path} names the checkpoint {checkpoint}, which is not one of {run}'s; evaluate the run again "
        f"(rfgan eval --run {run} --data DATA)."
    )


def _describe(run: _Run) -> str:
    d = run.decoder
    if d.kind == "gan":
        adversarial = d.config["loss"]["lambda_adv"] > 0
        return f"{d.config['preset']} preset{'' if adversarial else ', no D'}, epoch {d.epoch}"
    return f"{d.config.get('model', d.kind)}, λ = {d.config.get('lambda', float('nan')):.3g}"


def _grid(runs: list[_Run], targets: torch.Tensor, fakes: list[torch.Tensor]) -> str:
    width = max(DISPLAY_PX, targets.shape[-1])
    head = "".join(f"<th>{html.escape(r.name)}</th>" for r in runs)
    rows = []
    for i in range(len(targets)):
        cells = "".join(
            f'<td><img alt="{html.escape(label)} {i}" width="{width}" src="{_image_uri(image[i])}"></td>'
            for label, image in [("target", targets), *((r.name, f) for r, f in zip(runs, fakes, strict=True))]
        )
        rows.append(f"<tr>{cells}</tr>")
    return f'<table class="grid"><tr><th>target</th>{head}</tr>{"".join(rows)}</table>'


def _metrics_table(runs: list[_Run]) -> str:
    tables = [r.evaluation["metrics"] for r in runs]
    head = "".join(
        f"<th>{html.escape(r.name)}<br><span class='note'>{html.escape(_describe(r))}</span></th>" for r in runs
    )
    rows = []
    for metric in METRICS:
        values = [t.get(metric.key) for t in tables]
        if all(v is None for v in values):
            continue
        # Every metric of the table is better when higher (rfgan.evaluate.table).
        best = max(round(v["mean"], metric.digits) for v in values if v is not None)
        cells = []
        for v in values:
            if v is None:
                cells.append("<td>–</td>")
                continue
            mark = ' class="best"' if round(v["mean"], metric.digits) == best and len(runs) > 1 else ""
            cells.append(f'<td{mark} title="n = {v["n"]}">{html.escape(mean_se_text(metric.key, v))}</td>')
        rows.append(f'<tr data-metric="{metric.key}"><td>{html.escape(metric.label)}</td>{"".join(cells)}</tr>')
    return f"<table class='metrics'><tr><th>metric (mean ± SE over images)</th>{head}</tr>{''.join(rows)}</table>"


def _paired_table(runs: list[_Run]) -> str:
    """Each run against the first, image by image: the mean ± SE of the paired differences and the share of images
    where the run is better. Empty without a second run, or for tables of an rfgan that kept no per-image values."""
    first = runs[0]
    others = [
        r
        for r in runs[1:]
        if "per_image" in r.evaluation
        and "per_image" in first.evaluation
        and r.evaluation["image_ids"] == first.evaluation["image_ids"]
    ]
    if not others:
        return ""
    diffs = {
        r.name: paired(
            first.evaluation["per_image"],
            r.evaluation["per_image"],
            first.evaluation["image_ids"],
            r.evaluation["image_ids"],
        )
        for r in others
    }
    head = "".join(f"<th>{html.escape(name)} − {html.escape(first.name)}</th>" for name in diffs)
    rows = []
    for metric in METRICS:
        if not any(metric.key in d for d in diffs.values()):
            continue
        cells = []
        for d in diffs.values():
            v = d.get(metric.key)
            if v is None:
                cells.append("<td>–</td>")
                continue
            se = "" if v["se"] is None else f" ± {v['se']:.{metric.digits + 1}f}"
            cells.append(
                f'<td title="n = {v["n"]}">{v["mean"]:+.{metric.digits + 1}f}{se} '
                f"<span class='note'>(better on {v['better']:.0%}, worse on {v['worse']:.0%})</span></td>"
            )
        rows.append(f'<tr data-paired="{metric.key}"><td>{html.escape(metric.label)}</td>{"".join(cells)}</tr>')
    return (
        f"<h3>Paired differences against {html.escape(first.name)}</h3>"
        f"<table class='paired'><tr><th>metric (mean ± SE of the per-image difference)</th>{head}</tr>"
        f"{''.join(rows)}</table>"
    )


def _nets(run: _Run) -> str:
    return feature_nets_text(run.evaluation["feature_nets"])


def _rf_figure(run: _Run, info: DatasetInfo) -> bytes:
    """The run's learned RFs over the visual field, against its table and, when the dataset knows them, the truth."""
    d = run.decoder
    table = learned.learned_table(d.learned_rfs, d.rfs, d.info)
    truth = learned.true_rfs(info, d.rfs)
    s = learned.scores(d.rfs, table, truth)
    if truth is None:
        title = f"{run.name}: learned RFs moved {s['median_shift_deg']:.3g}° (median) from the table"
    else:
        e = s["median_centre_error_deg"]
        title = f"{run.name}: median centre error, fitted {e['fitted']:.3g}°, learned {e['learned']:.3g}°"
    return learned.draw(d.rfs, table, truth, d.info.fov_deg, title)


def render(
    runs: list[_Run], targets: torch.Tensor, fakes: list[torch.Tensor], rf_figures: dict[str, bytes] | None = None
) -> str:
    """The page for runs evaluated on one dataset split, `targets` (B, C, H, W) and each run's reconstructions;
    `rf_figures`: the learned-RF figure of each run that has one, by name."""
    first = runs[0].evaluation
    masked = [r.name for r in runs if r.evaluation.get("masked")]
    sections = [
        "<h1>rfgan report</h1>",
        f"<p>{len(runs)} run(s) on {html.escape(first['data'])}, split {html.escape(first['split'])}, "
        f"{first['n_images']} images. Made by rfgan {__version__} on {time.strftime('%Y-%m-%d %H:%M')}.</p>",
        "<h2>Reconstructions</h2>",
        f"<p class='note'>The first {len(targets)} images of the split.</p>",
        _grid(runs, targets, fakes),
        "<h2>Metrics</h2>",
        _metrics_table(runs),
        _paired_table(runs),
        "<p class='note'>Best of each row in green. Identification: two-way, against the other images of the split "
        "(chance 0.5); retrieval: the own image among all of the split's images by pixel correlation. "
        + (f"RF-mask rows: the mask of {', '.join(html.escape(m) for m in masked)}. " if masked else "")
        + "</p>",
        "<ul>"
        + "".join(f"<li>{html.escape(r.name)}: feature nets {html.escape(_nets(r))}</li>" for r in runs)
        + "</ul>",
    ]
    curves = [r for r in runs if r.curves is not None]
    if curves:
        sections.append("<h2>Training curves</h2>")
        for r in curves:
            sections.append(
                f'<h3>{html.escape(r.name)}</h3><img alt="curves {html.escape(r.name)}" '
                f'style="max-width: 100%" src="{_png_uri(r.curves)}">'
            )
    if rf_figures:
        sections.append("<h2>Learned receptive fields</h2>")
        sections.append(
            "<p class='note'>Grey: the RF table the run started from (circles of radius sigma); coloured by area: the "
            "learned RFs, a line from each fitted centre to its learned one; black crosses: the true centres, for a "
            "simulated dataset whose table is a fit (rfgan synth --rf-fit-error).</p>"
        )
        for name, png in rf_figures.items():
            sections.append(f'<img alt="learned RFs {html.escape(name)}" src="{_png_uri(png)}">')
    sections.append("<h2>Configs</h2>")
    for r in runs:
        sections.append(
            f"<h3>{html.escape(r.name)}</h3><p class='note'>{html.escape(r.decoder.checkpoint)}</p>"
            f"<pre>{html.escape(json.dumps(r.decoder.config, indent=2))}</pre>"
        )
    body = "\n".join(sections)
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">{TITLE}'
        f"<style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def write_report(
    runs: Sequence[str], out: str | None = None, split: str = "val", device: str = "cpu", n_images: int = GRID_IMAGES
) -> str:
    """Compare `runs` (each evaluated on the same dataset split by rfgan eval or rfgan baseline) on one HTML page,
    written to `out` (default: report.html in the first run), replacing only an earlier report; returns its path.
    Nothing is written on an error."""
    out = out or storage.join(runs[0], "report.html")
    check_outside_dataset(out, "a report page")
    outputs.check_target(out, REPORT_PAGE)
    loaded = [_Run(run, *_read_run(run, split, device)) for run in runs]
    names = [r.name for r in loaded]
    if len(set(names)) < len(names):  # runs of one name in different folders
        for i, r in enumerate(loaded):
            r.name = f"{i + 1}. {r.name}"
    first = loaded[0].evaluation
    for r in loaded[1:]:
        if (r.evaluation["data"], r.evaluation["split"]) != (first["data"], first["split"]):
            raise DataError(
                f"{r.path} was evaluated on {r.evaluation['data']} ({r.evaluation['split']}) but {loaded[0].path} on "
                f"{first['data']} ({first['split']}); evaluate them on the same dataset split (rfgan eval --data)."
            )
    data = first["data"]
    info, rfs = read_info(data), read_rfs(data)
    for r in loaded:
        # The same path is not the same data once the dataset was re-made: their tables (and image-by-image
        # differences) would compare scores on different images.
        if r.evaluation.get("data_fingerprint") not in (None, info.fingerprint):
            raise DataError(
                f"{r.path} was evaluated on {data} as it was before it was re-made (another fingerprint); evaluate "
                f"it again (rfgan eval --run {r.path} --data {data}), so that every run is scored on the same images."
            )
    for r in loaded:
        r.decoder.check_matches(info, rfs, data, Accept(other_rfs=True))
    responses, targets = to_tensors(next(iter_split(data, split, n_images)))
    fakes = [r.decoder.reconstruct(responses, device) for r in loaded]
    figures = {r.name: _rf_figure(r, info) for r in loaded if r.decoder.learned_rfs is not None}
    page = render(loaded, targets, fakes, figures)
    outputs.write_bytes(out, page.encode(), REPORT_PAGE)
    return out
