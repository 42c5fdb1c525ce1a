"""Looking at a run: a self-contained HTML trace of SMC and matplotlib plots of ESS/weights."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np

__all__ = ["particle_texts", "write_trace", "plot_result"]


def particle_texts(result) -> list[list[str | None]]:
    """``texts[t][i]``: the text of particle slot ``i`` after step ``t`` (None once finished).

    Rebuilt from the recorded history: slot ``i`` after step ``t`` extends slot
    ``ancestors[t, i]`` after step ``t - 1`` by ``history.tokens[t, i]``.
    """
    hist = result.extras.get("history")
    if hist is None:
        raise ValueError(f"Result of method {result.method!r} has no step history to trace.")
    strings = result.extras["token_strings"]
    toks = hist["tokens"]
    prev = [""] * toks.shape[1]
    out = []
    for t in range(toks.shape[0]):
        cur = []
        for i in range(toks.shape[1]):
            base = prev[int(result.ancestors[t, i])]
            tok = int(toks[t, i])
            cur.append(base + (strings[tok] if tok >= 0 else ""))
        out.append(cur)
        prev = cur
    return out


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>steerppl trace: {title}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:1.5em;color:#222}}
h1{{font-size:1.3em}} .meta{{color:#555}}
#controls{{margin:1em 0}} input[type=range]{{width:60%}}
table{{border-collapse:collapse;font-size:.9em}} td,th{{border-bottom:1px solid #ddd;padding:.2em .6em;text-align:left}}
td.w{{text-align:right;font-variant-numeric:tabular-nums}} .bar{{background:#4a7bd0;height:.7em;display:inline-block}}
.text{{font-family:ui-monospace,monospace;white-space:pre-wrap}} .res{{color:#b35}}
svg{{background:#fafafa;border:1px solid #ddd}}
</style></head><body>
<h1>steerppl · {title}</h1>
<p class="meta" id="meta"></p>
<h2>ESS per step</h2><svg id="ess" width="720" height="180"></svg>
<h2>Resampling lineage</h2><svg id="tree" width="720" height="260"></svg>
<div id="controls">step <input type="range" id="step" min="0" value="0"> <span id="stepno"></span></div>
<table id="particles"><thead><tr><th>#</th><th>parent</th><th>weight</th><th></th><th>text</th></tr></thead><tbody></tbody></table>
<script id="data" type="application/json">{data}</script>
<script>
const D = JSON.parse(document.getElementById('data').textContent);
const T = D.texts.length, N = D.texts[0] ? D.texts[0].length : 0;
document.getElementById('meta').textContent =
  `${{D.method}} · ${{N}} particles · ${{T}} steps · log-evidence ${{D.log_evidence}} · resampled at ${{D.resampled.filter(x=>x).length}} steps`;
const slider = document.getElementById('step'); slider.max = Math.max(T-1,0);
function norm(lw){{const m=Math.max(...lw.filter(x=>x!==null)); if(!isFinite(m)) return lw.map(()=>0);
  const e=lw.map(x=>x===null?0:Math.exp(x-m)); const s=e.reduce((a,b)=>a+b,0); return e.map(x=>x/s);}}
function show(t){{
  document.getElementById('stepno').textContent = `${{t}} / ${{T-1}}` + (D.resampled[t] ? ' (resampled)' : '');
  const w = norm(D.logw[t]); const tb = document.querySelector('#particles tbody'); tb.innerHTML='';
  for(let i=0;i<N;i++){{ const tr=document.createElement('tr'); tr.className='particle';
    tr.innerHTML = `<td>${{i}}</td><td>${{D.ancestors[t][i]}}</td><td class="w">${{w[i].toFixed(4)}}</td>`+
      `<td><span class="bar" style="width:${{Math.round(120*w[i])}}px"></span></td><td class="text"></td>`;
    tr.lastChild.textContent = D.texts[t][i]; tb.appendChild(tr);}}
}}
slider.oninput = () => show(+slider.value); show(T-1); slider.value=T-1;
// ESS chart: the curve first, then axes with ticks, the resampling threshold and the
// resampled steps
(function(){{const s=document.getElementById('ess'), W=720, H=180, L=46, R=14, Tp=22, B=34; let h='';
  const x=t=>L+(W-L-R)*t/Math.max(T-1,1), y=e=>H-B-(H-Tp-B)*e/Math.max(N,1);
  h+=`<polyline fill="none" stroke="#4a7bd0" stroke-width="2" points="${{D.ess.map((e,t)=>x(t)+','+y(e)).join(' ')}}"/>`;
  h+=`<g class="axes" stroke="#444" stroke-width="1"><line x1="${{L}}" y1="${{H-B}}" x2="${{W-R}}" y2="${{H-B}}"/>`+
     `<line x1="${{L}}" y1="${{Tp}}" x2="${{L}}" y2="${{H-B}}"/></g>`;
  const yt=[0, N/2, N], st=Math.max(1, Math.ceil((T-1)/8)), xt=[];
  for(let v=0; v<=Math.max(T-1,0); v+=st) xt.push(v);
  yt.forEach(v=>{{ h+=`<line class="tick" x1="${{L-4}}" y1="${{y(v)}}" x2="${{L}}" y2="${{y(v)}}" stroke="#444"/>`+
    `<text x="${{L-7}}" y="${{y(v)+4}}" font-size="11" text-anchor="end">${{+v.toFixed(1)}}</text>`; }});
  [...new Set(xt)].forEach(v=>{{ h+=`<line class="tick" x1="${{x(v)}}" y1="${{H-B}}" x2="${{x(v)}}" y2="${{H-B+4}}" stroke="#444"/>`+
    `<text x="${{x(v)}}" y="${{H-B+16}}" font-size="11" text-anchor="middle">${{v}}</text>`; }});
  h+=`<text x="${{(L+W-R)/2}}" y="${{H-3}}" font-size="11" text-anchor="middle">step</text>`;
  h+=`<text x="12" y="${{(Tp+H-B)/2}}" font-size="11" text-anchor="middle" transform="rotate(-90 12 ${{(Tp+H-B)/2}})">ESS</text>`;
  if(D.threshold!==null && D.threshold>0){{ const ty=y(D.threshold);
    h+=`<line id="threshold" x1="${{L}}" y1="${{ty}}" x2="${{W-R}}" y2="${{ty}}" stroke="#b35" stroke-dasharray="5,4"/>`+
       `<text x="${{W-R}}" y="${{ty-4}}" font-size="11" fill="#b35" text-anchor="end">resampling threshold ${{D.threshold_label}}</text>`; }}
  D.resampled.forEach((r,t)=>{{ if(r) h+=`<circle cx="${{x(t)}}" cy="${{y(D.ess[t])}}" r="3" fill="#b35"/>`; }});
  h+=`<text x="${{L}}" y="14" font-size="11">ESS before each step's resampling decision (max ${{N}}); red dots: resampled</text>`; s.innerHTML=h;}})();
// lineage tree: one node per (step, slot), edges to the parent slot; the lineages that
// survive to the final particles are dark, the ones resampling pruned are light
(function(){{const s=document.getElementById('tree'), W=720, H=260, p=12; let h='';
  const x=t=>p+(W-2*p)*t/Math.max(T-1,1), y=i=>p+(H-2*p)*i/Math.max(N-1,1);
  const alive=[]; alive[T-1]=new Array(N).fill(true);
  for(let t=T-1;t>0;t--){{ alive[t-1]=new Array(N).fill(false);
    for(let i=0;i<N;i++) if(alive[t][i]) alive[t-1][D.ancestors[t][i]]=true; }}
  D.resampled.forEach((r,t)=>{{ if(r) h+=`<rect x="${{x(t)-2}}" y="0" width="4" height="${{H}}" fill="#f3d6de"/>`; }});
  for(let t=1;t<T;t++) for(let i=0;i<N;i++){{ const a=D.ancestors[t][i], on=alive[t][i];
    h+=`<line x1="${{x(t-1)}}" y1="${{y(a)}}" x2="${{x(t)}}" y2="${{y(i)}}" stroke="${{on?'#24508f':'#c8c8c8'}}" stroke-width="${{on?1.4:0.7}}"/>`; }}
  h+=`<text x="${{p}}" y="${{H-2}}" font-size="11">dark: ancestors of the final particles; pink: resampling steps</text>`;
  s.innerHTML=h;}})();
</script></body></html>
"""


def _threshold(result) -> dict:
    """The ESS below which the run resampled, from the recorded options (None if unknown)."""
    frac = (getattr(result, "options", None) or {}).get("ess_threshold")
    if not isinstance(frac, (int, float)) or isinstance(frac, bool):
        return {"threshold": None, "threshold_label": ""}
    n = result.num_particles
    return {"threshold": float(frac) * n, "threshold_label": f"ESS < {frac:g} × {n}"}


def write_trace(result, path: str | Path, title: str | None = None) -> Path:
    """Writes a self-contained HTML page showing the run step by step.

    The page shows, for a chosen step, every particle's text, parent and normalised weight,
    the ESS curve (axes with ticks, the resampling threshold ``ess_threshold × N`` as a
    dashed line when the run recorded it, the resampling steps marked), and the lineage of the
    particles as a tree.
    """
    texts = particle_texts(result)
    lw = result.extras["history"]["log_weights"]
    data = {
        "method": result.method,
        "log_evidence": (None if result.log_evidence is None or not math.isfinite(result.log_evidence)
                         else round(result.log_evidence, 4)),
        "texts": texts,
        "logw": [[(float(x) if np.isfinite(x) else None) for x in row] for row in lw],
        "ancestors": result.ancestors.astype(int).tolist(),
        "resampled": [bool(x) for x in result.resampled],
        "ess": [float(x) for x in result.ess],
    }
    data.update(_threshold(result))
    blob = json.dumps(data).replace("</", "<\\/")
    page = _PAGE.format(title=html.escape(title or result.method), data=blob)
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path


def _figure(result):
    """The matplotlib figure [plot_result][ppl.viz.plot_result] saves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.6))
    a.plot(np.arange(len(result.ess)), result.ess, marker=".", label="ESS")
    res_steps = np.nonzero(result.resampled)[0]
    a.scatter(res_steps, result.ess[res_steps], color="crimson", zorder=3, label="resampled")
    thr = _threshold(result)
    if thr["threshold"] is not None and thr["threshold"] > 0:
        a.axhline(thr["threshold"], color="crimson", linestyle="--", linewidth=1,
                  label=f"threshold ({thr['threshold_label']})")
    a.set_xlabel("step")
    a.set_ylabel("ESS")
    a.set_ylim(0, result.num_particles * 1.05)
    # below the axes, never over the curve
    a.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=3, frameon=False, fontsize=8)
    a.set_title("effective sample size")
    order = np.argsort(-result.weights)
    b.bar(np.arange(len(order)), result.weights[order])
    b.set_xlabel("particle (sorted)")
    b.set_ylabel("normalised weight")
    le = result.log_evidence
    b.set_title("final weights" + ("" if le is None else f" (log Z ≈ {le:.3f})"))
    fig.tight_layout()
    return fig


def plot_result(result, path: str | Path) -> Path:
    """Saves a PNG with the ESS per step (the resampling threshold dashed, the legend below
    the axes) and the final normalised weights."""
    import matplotlib.pyplot as plt

    fig = _figure(result)
    path = Path(path)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
