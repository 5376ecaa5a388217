"""The leaderboard as one static page (`harness leaderboard --format html`).

The page is a single file that opens from disk and makes no request: style and script are inline and the figures
are data URIs. The tables are written out in full, so the page reads without its script; the script only sorts a
table when a header is clicked. Each header carries its column's definition as a tooltip, and the definitions are
listed under each table as in Markdown.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any

import pandas as pd

from harness import leaderboard, privacy_notes, table_notes
from harness.metrics.columns import Column
from harness.provenance import REPRODUCIBILITY, records
from harness.robustness_tables import robustness_frame


def page(results: list[dict[str, Any]], frame: pd.DataFrame, every: list[Column], hashes: list[str]) -> str:
    """The whole page: header and spec summary, the grouped tables with their notes, the re-ID model, every row's
    details, the figures and the record of how the numbers were made."""
    bench = results[0]["benchmark"]
    rows = frame.to_dict("records")
    anchors = [f"row-{i}" for i in range(len(rows))]
    notes = table_notes.group_notes(results)
    parts = [f"<h1>{_esc(bench['title'])}</h1>", _summary(results, hashes)]
    if any(r.get("control") is True for r in rows):
        parts.append(_prose(f"Rows marked *control* {leaderboard.CONTROLS}"))
    if any(leaderboard.short_of(r) for r in rows):
        parts.append(_prose(f"Rows marked *n of N samples* {leaderboard.SHORT}"))
    for group, title, shown in leaderboard.grouped(every, frame):
        parts.append(f'<section id="{group}"><h2>{_esc(title)}</h2>'
                     + _table(group, shown, rows, anchors, mixed=len(hashes) > 1) + _definitions(shown)
                     + _prose(notes.get(group, "")) + "</section>")
        if group == "privacy":
            parts.append(_robustness(results))
    reid = results[0].get("reid")
    if reid:
        parts.append(_prose(table_notes.interval_note(reid, results[0].get("downstream"))))
    parts += [_reid(results), _details(results, rows, anchors, every), _figures(results), _record(results)]
    body = "\n".join(part for part in parts if part)
    return TEMPLATE.format(title=_esc(bench["title"]), style=STYLE, script=SCRIPT, body=body)


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _prose(text: str) -> str:
    """The Markdown notes the tables share with `leaderboard.md` (`code`, **bold**, *emphasis*), as paragraphs."""
    out = []
    for paragraph in (p.strip() for p in text.split("\n\n")):
        if paragraph:
            escaped = _esc(paragraph)
            escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
            escaped = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", escaped)
            escaped = re.sub(r"\*([^*\s][^*]*)\*", r"<em>\1</em>", escaped)
            out.append(f'<p class="note">{escaped}</p>')
    return "".join(out)


def _summary(results: list[dict[str, Any]], hashes: list[str]) -> str:
    """The benchmark hash and what the spec set: dataset splits, encoder, re-ID, privacy, downstream."""
    first = results[0]
    bench = first["benchmark"]
    items = {"benchmark": f"<code>{_esc(', '.join(hashes))}</code> (spec <code>{_esc(bench['spec_hash'])}</code>), "
                          f"seed {_esc(bench['seed'])}"}
    splits = (first.get("dataset") or {}).get("splits") or {}
    items["dataset"] = f"<code>{_esc(bench['dataset'])}</code>: " + ", ".join(
        f"{_esc(name)} {_esc(report.get('videos', '?'))} videos" for name, report in splits.items())
    encoder = first.get("encoder") or {}
    items["encoder"] = (f"<code>{_esc(bench['encoder'])}</code> ({_esc(encoder.get('space', ''))} space, latent "
                        f"{_esc(encoder.get('latent_shape', ''))}, reconstruction PSNR "
                        f"{_esc(encoder.get('recon_psnr_db', ''))} dB)")
    reid = first.get("reid")
    if reid:
        items["re-identification"] = (f"<code>{_esc(reid['plugin'])}</code>, head <code>{_esc(reid['head'])}</code>, "
                                      f"τ at the {reid['percentile']:g}th percentile ({_esc(reid['calibration'])}), "
                                      f"{_esc(reid.get('models', 1))} model(s) pooled; "
                                      f"{_esc(privacy_notes.reference_frames_note(reid))}")
    motion = first.get("motion")
    if motion and not motion.get("error"):
        items["motion"] = (f"flow between frames i and i + {_esc(motion['frame_gap'])} at {_esc(motion['flow_size'])} "
                           f"px, decoded in {_esc(motion.get('decode_precision', 'float32'))}")
    downstream = first.get("downstream")
    if downstream:
        items["downstream"] = (f"<code>{_esc(downstream['task'])}</code>, strategies "
                               + ", ".join(f"<code>{_esc(s)}</code>" for s in downstream["strategies"]))
    return '<dl class="summary">' + "".join(f"<dt>{_esc(k)}</dt><dd>{v}</dd>" for k, v in items.items()) + "</dl>"


def _table(group: str, shown: list[Column], rows: list[dict[str, Any]], anchors: list[str], mixed: bool) -> str:
    head = ['<th data-type="text" data-first="ascending" aria-sort="none"><button type="button">generator'
            "</button></th>"]
    if mixed:
        head.insert(0, '<th data-type="text" data-first="ascending" aria-sort="none"><button type="button">'
                       "benchmark</button></th>")
    for c in shown:
        numeric = any(_number(c.value(r)) for r in rows)
        first = "descending" if c.direction == "↑" else "ascending"
        arrow = f' <span class="dir">{c.direction}</span>' if c.direction else ""
        head.append(f'<th data-key="{_esc(c.key)}" data-type="{"num" if numeric else "text"}" data-first="{first}" '
                    f'aria-sort="none" title="{_esc(c.definition)}"><button type="button">{_esc(c.label)}{arrow}'
                    "</button></th>")
    body = []
    for row, anchor in zip(rows, anchors, strict=True):
        name = _esc(row["generator"])
        badge = ' <span class="badge">control</span>' if row.get("control") is True else ""
        if leaderboard.short_of(row):
            badge += f' <span class="badge">{_esc(leaderboard.short_of(row))}</span>'
        cells = [f'<td data-value="{name}"><a href="#{anchor}">{name}</a>{badge}</td>']
        if mixed:
            bench, title = _esc(row["benchmark_hash"]), _esc(row.get("benchmark_name") or "")
            cells.insert(0, f'<td data-value="{title} {bench}">{title} <code>{bench}</code></td>')
        unreliable = row.get("privacy_reliable") is False
        cells += [_cell(c, row, unreliable and c.needs_reid) for c in shown]
        body.append(f'<tr data-generator="{name}">' + "".join(cells) + "</tr>")
    return (f'<div class="wrap"><table class="board" data-group="{group}"><thead><tr>' + "".join(head)
            + "</tr></thead><tbody>" + "".join(body) + "</tbody></table></div>")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _cell(c: Column, row: dict[str, Any], unreliable: bool) -> str:
    value = c.value(row)
    if not leaderboard.filled(value):
        return '<td data-value=""></td>'
    flag = ' <span class="flag">unreliable</span>' if unreliable else ""
    if not _number(value):
        return f'<td data-value="{_esc(value)}">{_esc(value)}{flag}</td>'
    shown = f"{value:.{c.digits}f}" if isinstance(value, float) else str(value)
    low, high = c.bounds(row)
    interval = (f' <span class="ci">[{low:.{c.digits}f}, {high:.{c.digits}f}]</span>'
                if _number(low) and _number(high) else "")
    return f'<td class="num" data-value="{float(value)!r}">{shown}{interval}{flag}</td>'


def _definitions(shown: list[Column]) -> str:
    items = "".join(f"<dt>{_esc(c.header)}</dt><dd>{_esc(c.definition)}</dd>" for c in shown if c.definition)
    return f'<dl class="defs">{items}</dl>' if items else ""


def _frame_table(frame: pd.DataFrame) -> str:
    """A plain table (re-ID quality, utility per strategy) with the page's look."""
    return '<div class="wrap">' + frame.to_html(index=False, classes="plain", border=0, na_rep="") + "</div>"


def _reid(results: list[dict[str, Any]]) -> str:
    frames = leaderboard.reid_frames(results)
    if frames is None:
        return ""
    quality, heads = frames
    return ('<section id="reid"><h2>Re-identification model</h2><p class="note">Test pairs, threshold 0.5.</p>'
            + _frame_table(quality) + "<h3>AUC per head</h3>" + _frame_table(heads) + "</section>")


def _robustness(results: list[dict[str, Any]]) -> str:
    robustness = robustness_frame(results)
    if robustness is None:
        return ""
    note, lines = robustness
    return ('<section id="robustness"><h2>Robustness of memorisation detection (near-copies)</h2>'
            + _frame_table(lines) + _prose(note) + "</section>")


def _details(results: list[dict[str, Any]], rows: list[dict[str, Any]], anchors: list[str], every: list[Column]
             ) -> str:
    """Per row: errors, what the generator reported, the numbers per re-ID model, downstream utility per
    strategy and where the row was made."""
    utility = leaderboard.utility_frame(results)
    labels = {c.key: c.label for c in every}
    items = []
    for row, anchor in zip(rows, anchors, strict=True):
        parts = [f'<p class="error">{_esc(row[key])}</p>' for key in ("error", "motion_error")
                 if leaderboard.filled(row.get(key))]
        returned = row.get("n_returned")
        facts = {"plugin": row.get("plugin"), "config hash": row.get("generator_hash"),
                 "samples": f"{int(returned)} of {row['n_samples']}" if leaderboard.filled(returned)
                 else f"none of {row['n_samples']}",
                 "made with": f"harness {row.get('harness_version')}, revision {str(row.get('git_revision'))[:12]}, "
                              f"{row.get('device')}, seed {row.get('seed')}"}
        if isinstance(row.get("generator_report"), dict):
            facts["generator report"] = ", ".join(f"{k}: {v}" for k, v in row["generator_report"].items())
        if isinstance(row.get("per_model"), dict):
            facts.update({f"{labels.get(k, k.replace('_pct', ' %').replace('_', ' '))} per re-ID model":
                          ", ".join(f"{v:.3g}" for v in values)
                          for k, values in row["per_model"].items()})
        parts.append("<dl>" + "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in facts.items()) + "</dl>")
        if utility is not None:
            mine = utility[1][utility[1]["generator"] == row["generator"]]
            if len(mine):
                parts.append("<h4>Downstream utility per training set</h4>" + _frame_table(mine.drop(
                    columns="generator")))
        control = ' <span class="badge">control</span>' if row.get("control") is True else ""
        items.append(f'<details id="{anchor}"><summary>{_esc(row["generator"])}{control}</summary>'
                     + "".join(parts) + "</details>")
    note = _prose(utility[0]) if utility is not None else ""
    return '<section id="details"><h2>Rows in detail</h2>' + note + "".join(items) + "</section>"


def _figures(results: list[dict[str, Any]]) -> str:
    """Each run's publishable figures, inline (aggregates and generated frames only)."""
    shown = []
    for result in results:
        folder = Path(result["_source"]) / "figures" if "_source" in result else None
        for label, name in leaderboard.publishable_figures(result).items():
            if folder is None or not (folder / name).is_file():
                continue
            data = base64.b64encode((folder / name).read_bytes()).decode("ascii")
            caption = label.replace("_", " ")
            shown.append(f'<figure><img alt="{_esc(caption)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{_esc(caption)}</figcaption></figure>")
    return '<section id="figures"><h2>Figures</h2>' + "".join(shown) + "</section>" if shown else ""


def _record(results: list[dict[str, Any]]) -> str:
    lines, packages = records(results)
    if not lines:
        return ""
    return ('<section id="record"><h2>How these numbers were made</h2>' + _frame_table(pd.DataFrame(lines))
            + "".join(f'<p class="note">Packages: {_esc(p)}.</p>' for p in packages) + _prose(REPRODUCIBILITY)
            + "</section>")


TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<main>
{body}
</main>
<script>{script}</script>
</body>
</html>
"""

STYLE = """
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2330;
       background: #fafbfc; }
main { max-width: 1180px; margin: 0 auto; padding: 1.5rem 1.25rem 3rem; }
h1 { font-size: 1.6rem; margin: 0 0 .75rem; }
h2 { font-size: 1.2rem; margin: 2rem 0 .5rem; border-bottom: 1px solid #dde1e7; padding-bottom: .2rem; }
h3, h4 { font-size: 1rem; margin: 1rem 0 .4rem; }
code { font: .88em ui-monospace, SFMono-Regular, Menlo, monospace; background: #eef1f5; padding: 0 .25em;
       border-radius: 3px; }
.wrap { overflow-x: auto; }
table { border-collapse: collapse; background: #fff; font-size: .92rem; }
th, td { padding: .35rem .6rem; border-bottom: 1px solid #e6e9ee; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.board th { background: #f1f4f8; position: sticky; top: 0; }
table.board th button { all: unset; cursor: pointer; font-weight: 600; }
table.board th[title] button { text-decoration: underline dotted #8a94a6; text-underline-offset: 3px; }
table.board th[aria-sort="ascending"] button::after { content: " \\25B2"; font-size: .7em; }
table.board th[aria-sort="descending"] button::after { content: " \\25BC"; font-size: .7em; }
table.board tbody tr:hover { background: #f6f8fb; }
.dir { color: #5b6679; }
.ci { color: #6b7485; font-size: .85em; }
.badge { display: inline-block; font-size: .72em; padding: 0 .4em; border-radius: 8px; background: #e3e8ef;
         color: #3b4658; vertical-align: middle; }
.flag { color: #a3261d; font-size: .8em; }
.error { color: #a3261d; }
dl.defs, dl.summary, details dl { display: grid; grid-template-columns: max-content 1fr; gap: .15rem .9rem;
                                  margin: .6rem 0; font-size: .9rem; }
dl.defs dt, dl.summary dt, details dt { font-weight: 600; }
dd { margin: 0; }
.note { font-size: .9rem; color: #333b4a; max-width: 75em; }
details { background: #fff; border: 1px solid #e1e5eb; border-radius: 6px; padding: .4rem .8rem; margin: .4rem 0; }
summary { cursor: pointer; font-weight: 600; }
figure { display: inline-block; margin: .5rem 1rem .5rem 0; vertical-align: top; }
figure img { max-width: 100%; width: 540px; border: 1px solid #e1e5eb; background: #fff; }
figcaption { font-size: .85rem; color: #5b6679; }
"""

SCRIPT = """
(function () {
  function sortBy(table, th, column) {
    var current = th.getAttribute("aria-sort");
    var ascending = current === "none" ? th.dataset.first === "ascending" : current !== "ascending";
    table.querySelectorAll("thead th").forEach(function (other) { other.setAttribute("aria-sort", "none"); });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var numeric = th.dataset.type === "num";
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[column].dataset.value, y = b.cells[column].dataset.value;
      if (x === "" || y === "") { return (x === "") - (y === ""); }  /* empty cells last, either way */
      var order = numeric ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
      return ascending ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }
  document.querySelectorAll("table.board").forEach(function (table) {
    table.querySelectorAll("thead th").forEach(function (th, column) {
      th.querySelector("button").addEventListener("click", function () { sortBy(table, th, column); });
    });
  });
  document.documentElement.dataset.sortable = "ready";
})();
"""
