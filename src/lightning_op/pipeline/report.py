"""A training job's report: one self-contained HTML page with PNG plots, readable without a server.

``write_report(store, job_id)`` reads the job (``pipeline.training``), the evaluation files its rounds
wrote and, once the job's adapter was promoted, the live episodes of the previous and the promoted
model (``pipeline.promotion``), and writes ``index.html`` plus the plots as PNG files beside it:

- ``loss.png``: training loss per step across rounds, validation loss per epoch;
- ``scores.png``: the baseline's and each round's held-out score against the threshold, with the
  round's learning rate;
- ``rewards.png``: the reward distribution before and after: live episodes of the previous vs the
  promoted model when there was a promotion, else the held-out evaluation's per-example scores of
  the base model vs the best round.

The PNGs are also embedded in the page as base64, so ``index.html`` alone can be mailed or attached
to a pull request. Plots use matplotlib's Agg backend (no display). Never prints.
"""

from __future__ import annotations

import base64
import html
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_op.pipeline import promotion as promotion_mod
from lightning_op.pipeline import training as training_mod
from lightning_op.store import base as store_base

log = logging.getLogger(__name__)

_BINS = [i / 10 for i in range(11)]


@dataclass
class RewardSample:
    """Rewards of one side of the before/after plot, and where they came from."""

    label: str
    rewards: list[float]


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _example_scores(path: Path) -> list[float]:
    data = _read_json(path) or {}
    return [float(e.get("score") or 0.0) for e in data.get("perExample") or [] if isinstance(e, Mapping)]


def reward_samples(
    store: store_base.EpisodeStore, job: Mapping[str, Any]
) -> tuple[RewardSample, RewardSample, str]:
    """(before, after, what they are) for the reward distribution plot."""
    promotion = promotion_mod.latest_promotion(store, job_id=str(job["id"]))
    agent = job.get("agentId")
    if promotion is not None and agent and promotion.get("previousModel") and promotion.get("promotedModel"):
        stats = promotion_mod.version_stats(store, str(agent))
        before, after = str(promotion["previousModel"]), str(promotion["promotedModel"])
        empty = promotion_mod.VersionStats(model_version="")
        return (
            RewardSample(f"before: {before}", stats.get(before, empty).rewards),
            RewardSample(f"after: {after}", stats.get(after, empty).rewards),
            f"labeled live episodes of agent {agent}, by model version",
        )
    workdir = Path(str(job["workdir"]))
    best = (job.get("result") or {}).get("bestRound")
    base_scores = _example_scores(workdir / "baseline" / "evaluation-baseline.json")
    best_scores = _example_scores(workdir / f"round-{best}" / "evaluation.json") if best else []
    return (
        RewardSample("before: base model", base_scores),
        RewardSample(f"after: round {best}" if best else "after: (no round)", best_scores),
        "per-example grader scores on the held-out split (not promoted yet: no live episodes to compare)",
    )


# -------------------------------------------------------------------------------------------- plots


def _figure() -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 3.8), dpi=100)
    return fig, ax


def _save(fig: Any, path: Path) -> bytes:
    from matplotlib import pyplot as plt

    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path.read_bytes()


def plot_losses(rounds: Sequence[Mapping[str, Any]], path: Path) -> bytes:
    fig, ax = _figure()
    offset = 0.0
    drawn = False
    for entry in rounds:
        curve = entry.get("curve") or []
        color = f"C{(int(entry['round']) - 1) % 10}"
        if curve:
            steps = [offset + float(p["step"]) for p in curve]
            ax.plot(
                steps,
                [float(p["loss"]) for p in curve],
                color=color,
                lw=1.2,
                label=f"round {entry['round']} train (lr {float(entry.get('learningRate') or 0):.2g})",
            )
            drawn = True
        epochs = [e for e in entry.get("epochs") or [] if e.get("validLoss") is not None]
        if epochs and curve:
            last = float(curve[-1]["step"])
            per_epoch = last / max(1, len(entry.get("epochs") or []))
            xs = [offset + per_epoch * (i + 1) for i in range(len(epochs))]
            ax.plot(
                xs,
                [float(e["validLoss"]) for e in epochs],
                "o--",
                color=color,
                ms=5,
                label=f"round {entry['round']} validation",
            )
        if curve:
            offset += float(curve[-1]["step"])
    if not drawn:
        ax.text(0.5, 0.5, "no training steps recorded yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("optimizer step (cumulative over rounds)")
    ax.set_ylabel("loss (assistant tokens)")
    ax.set_title("Loss curves")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8)
    return _save(fig, path)


def plot_scores(job: Mapping[str, Any], path: Path) -> bytes:
    fig, ax = _figure()
    labels: list[str] = []
    values: list[float] = []
    colors: list[str] = []
    baseline = job.get("baseline") or {}
    if baseline.get("score") is not None:
        labels.append("baseline")
        values.append(float(baseline["score"]))
        colors.append("#999999")
    best = (job.get("result") or {}).get("bestRound")
    for entry in job.get("rounds") or []:
        if entry.get("score") is None:
            continue
        labels.append(f"round {entry['round']}\nlr {float(entry.get('learningRate') or 0):.2g}")
        values.append(float(entry["score"]))
        colors.append("#2a9d8f" if entry["round"] == best else "#8ecae6")
    threshold = float((job.get("evaluation") or {}).get("threshold", 0.75))
    if values:
        bars = ax.bar(range(len(values)), values, color=colors)
        for bar, value in zip(bars, values, strict=True):
            ax.text(bar.get_x() + bar.get_width() / 2, value + 0.02, f"{value:.2f}", ha="center", fontsize=9)
        ax.set_xticks(range(len(values)), labels, fontsize=8)
    else:
        ax.text(0.5, 0.5, "no scores yet", ha="center", va="center", transform=ax.transAxes)
    ax.axhline(threshold, color="#e76f51", ls="--", lw=1.2, label=f"threshold {threshold:.2f}")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("held-out score")
    ax.set_title("Score per round")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_rewards(before: RewardSample, after: RewardSample, source: str, path: Path) -> bytes:
    fig, ax = _figure()
    width = 0.045
    for sample, shift, color in ((before, -width / 2, "#999999"), (after, width / 2, "#2a9d8f")):
        if not sample.rewards:
            continue
        counts = [0] * 10
        for reward in sample.rewards:
            counts[min(9, int(reward * 10))] += 1
        share = [c / len(sample.rewards) for c in counts]
        mean = sum(sample.rewards) / len(sample.rewards)
        ax.bar(
            [b + 0.05 + shift for b in _BINS[:-1]],
            share,
            width=width,
            color=color,
            label=f"{sample.label} (n={len(sample.rewards)}, mean {mean:.2f})",
        )
    if not before.rewards and not after.rewards:
        ax.text(0.5, 0.5, "no rewards to show yet", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("reward")
    ax.set_ylabel("share of episodes")
    ax.set_title("Reward distribution before / after", fontsize=11)
    ax.text(0.0, -0.28, source, transform=ax.transAxes, fontsize=7, color="#555555")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------- html

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:60rem;color:#222}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
td,th{border:1px solid #ddd;padding:.25rem .6rem;text-align:left}th{background:#f5f5f5}
.good{color:#1b7f3b}.bad{color:#b42318}.muted{color:#666}
img{max-width:100%;border:1px solid #eee;margin:.5rem 0}code{background:#f5f5f5;padding:0 .2rem}
"""


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return (
            f"{value:.{digits}g}"
            if abs(value) < 1e-3 and value
            else f"{value:.{digits}f}".rstrip("0").rstrip(".")
        )
    return str(value)


def _table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], classes: Sequence[str] | None = None
) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _img(name: str, data: bytes, alt: str) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img alt="{html.escape(alt)}" title="{html.escape(name)}" src="data:image/png;base64,{encoded}">'


def render_html(job: Mapping[str, Any], images: Mapping[str, bytes], reward_source: str) -> str:
    result = job.get("result") or {}
    baseline = job.get("baseline") or {}
    evaluation = job.get("evaluation") or {}
    dataset = job.get("dataset") or {}
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>lightning-op training report {html.escape(str(job['id']))}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Training report: <code>{html.escape(str(job['id']))}</code></h1>",
        f"<p>Agent <b>{html.escape(str(job.get('agentId') or '–'))}</b> · "
        f"phase <b>{html.escape(str(job['phase']))}</b> · {html.escape(str(job.get('message') or ''))}</p>",
    ]
    if result:
        met = result.get("thresholdMet")
        verdict = "meets" if met else "does not meet"
        parts.append(
            f"<p class='{'good' if met else 'bad'}'>Held-out score {_fmt(baseline.get('score'))} "
            f"(base model) → {_fmt(result.get('score'))} (round {_fmt(result.get('bestRound'))}, the best "
            f"of {result.get('rounds')}); {verdict} the threshold {_fmt(evaluation.get('threshold'))}. "
            f"Stopped: {html.escape(str(result.get('stopReason')))}.</p>"
        )
        if not result.get("fineTunedModel") and result.get("bestCheckpoint"):
            parts.append(
                "<p>Best round's adapter (below the threshold, not offered for promotion): "
                f"<code>{html.escape(str(result['bestCheckpoint']))}</code></p>"
            )
        if result.get("fineTunedModel"):
            parts.append(
                f"<p>Fine-tuned adapter: <code>{html.escape(str(result['fineTunedModel']))}</code></p>"
            )
    for warning in job.get("warnings") or []:
        parts.append(f"<p class='bad'>Warning: {html.escape(str(warning))}</p>")

    parts.append("<h2>Rounds</h2>")
    rows: list[list[Any]] = [["baseline", None, None, None, None, baseline.get("score"), None]]
    for entry in job.get("rounds") or []:
        epochs = entry.get("epochs") or [{}]
        for i, epoch in enumerate(epochs):
            last = i == len(epochs) - 1
            rows.append(
                [
                    entry["round"] if i == 0 else "",
                    entry.get("learningRate") if i == 0 else None,
                    epoch.get("epoch"),
                    epoch.get("trainLoss"),
                    epoch.get("validLoss"),
                    entry.get("score") if last else None,
                    entry.get("seconds") if last else None,
                ]
            )
    parts.append(
        _table(["round", "learning rate", "epoch", "train loss", "valid loss", "score", "seconds"], rows)
    )
    parts.append(_img("loss.png", images["loss.png"], "loss curves"))
    parts.append(_img("scores.png", images["scores.png"], "score per round"))

    parts.append("<h2>Against the baseline</h2>")
    changes = [(c, "good") for c in result.get("improvements") or []] + [
        (c, "bad") for c in result.get("regressions") or []
    ]
    if changes:
        parts.append(
            _table(
                ["metric", "baseline", "best round", "change"],
                [[c["metric"], c["baseline"], c["value"], f"{c['delta']:+.4f}"] for c, _ in changes],
                [cls for _, cls in changes],
            )
        )
    else:
        parts.append("<p class='muted'>No metric changed (or the job has not finished).</p>")
    parts.append(_img("rewards.png", images["rewards.png"], "reward distribution before and after"))
    parts.append(f"<p class='muted'>Rewards: {html.escape(reward_source)}.</p>")

    parts.append("<h2>Inputs</h2>")
    hyper = job.get("hyperparameters") or {}
    parts.append(
        _table(
            ["setting", "value"],
            [
                ["base model", (job.get("config") or {}).get("baseModel")],
                ["dataset", dataset.get("name") or dataset.get("path")],
                ["training file", dataset.get("path")],
                ["held-out file", dataset.get("evalPath")],
                ["dataset sha256", dataset.get("sha256")],
                ["grader", evaluation.get("grader")],
                [
                    "threshold / max rounds / lr decay",
                    " / ".join(str(evaluation.get(k)) for k in ("threshold", "maxRounds", "lrDecay")),
                ],
                *[[f"hyperparameters.{k}", v] for k, v in sorted(hyper.items())],
                ["created", job.get("created")],
                ["finished", job.get("finished")],
            ],
        )
    )
    parts.append(
        "<p class='muted'>Generated by lightning-op report; "
        "the plots are also PNG files next to this page.</p>"
    )
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(store: store_base.EpisodeStore, job_id: str, output_dir: Path | None = None) -> Path:
    """Write the job's report (``index.html`` and the PNGs); returns the path of ``index.html``."""
    job = training_mod.get_training_status(store, job_id)
    out = (output_dir or Path(str(job["workdir"])) / "report").expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    rounds = [r for r in job.get("rounds") or [] if r.get("round")]
    before, after, source = reward_samples(store, job)
    images = {
        "loss.png": plot_losses(rounds, out / "loss.png"),
        "scores.png": plot_scores(job, out / "scores.png"),
        "rewards.png": plot_rewards(before, after, source, out / "rewards.png"),
    }
    index = out / "index.html"
    index.write_text(render_html(job, images, source), encoding="utf-8")
    log.info("report for job %s written to %s", job_id, index)
    return index
