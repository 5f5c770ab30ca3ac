"""The web page of ``ocrloop serve``: ``/`` reads a dropped document with the champion and, when there is one,
the latest challenger, side by side (differences and redacted personal data marked); ``/runs`` is the loop's
history (the ``ocrloop report`` page). Plain server-rendered HTML with a little JavaScript, nothing from a CDN."""

from __future__ import annotations

import asyncio
import html
import json

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from ocrloop.loop.report import render_report
from ocrloop.registry.store import business_label
from ocrloop.serve.routes.models import models
from ocrloop.serve.state import ServiceDep

router = APIRouter(tags=["web"], include_in_schema=False)

_STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1200px;color:#222;padding:0 1em}
header{display:flex;justify-content:space-between;align-items:baseline}nav a{margin-left:1em}
form{margin:1em 0;padding:1em;border:1px dashed #999;border-radius:6px}
.columns{display:grid;grid-template-columns:1fr 1fr;gap:1em}.columns.one{grid-template-columns:1fr}
.reading h2{font-size:1em;margin:.2em 0}.model{color:#555;font-size:.9em}
pre{white-space:pre-wrap;background:#fafafa;border:1px solid #ddd;padding:.8em;min-height:6em;font-size:13px}
mark.diff{background:#ffe08a}mark.pii{background:#f4b6c2}.error{color:#b3261e}#status{color:#555}"""

_SCRIPT = """
const challenger = JSON.parse(document.getElementById('challenger-name').textContent);
const esc = s => s.replace(/[&<>"]/g, c => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;'}[c]));
function marked(text, other) {
  const others = other === null ? null : new Set(other.split(/\\s+/));
  return text.split(/(\\s+)/).map(word => {
    if (/^\\s*$/.test(word)) return word;
    if (/\\[(SSN|CREDIT_CARD|IBAN|EMAIL|PHONE|SECRET)\\]/.test(word)) return '<mark class="pii">' + esc(word) + '</mark>';
    if (others !== null && !others.has(word)) return '<mark class="diff">' + esc(word) + '</mark>';
    return esc(word);
  }).join('');
}
async function read(file, business, model) {
  const body = new FormData();
  body.append('file', file);
  const options = new URLSearchParams({pii_policy: 'redact'});
  if (business) options.set('business', business);
  if (model) options.set('model', model);
  const answer = await fetch('/v1/ocr?' + options, {method: 'POST', body});
  const payload = await answer.json();
  return answer.ok ? payload : {error: payload.error || answer.statusText};
}
function show(slot, answer, other) {
  const box = document.getElementById(slot + '-text');
  if (answer.error) { box.className = 'error'; box.textContent = answer.error; return; }
  document.getElementById(slot + '-model').textContent =
    answer.model + ' · ' + answer.pages.length + ' page(s) · ' + answer.seconds + ' s';
  box.className = '';
  box.innerHTML = marked(answer.text, other && !other.error ? other.text : null);
}
document.getElementById('read-form').addEventListener('submit', async event => {
  event.preventDefault();
  const file = document.getElementById('file').files[0];
  const status = document.getElementById('status');
  if (!file) { status.textContent = 'choose a document first'; return; }
  status.textContent = 'reading ' + file.name + '…';
  const business = document.getElementById('business').value;
  const readings = [read(file, business, null)];
  if (challenger) readings.push(read(file, business, challenger));
  const [champion, other] = await Promise.all(readings);
  show('champion', champion, other || null);
  if (other) show('challenger', other, champion);
  status.textContent = 'read ' + file.name;
});
"""


def _page(title: str, body: str, script: str = "") -> HTMLResponse:
    return HTMLResponse(f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
                        f"<style>{_STYLE}</style></head><body><header><h1>ocrloop</h1><nav><a href=\"/\">read a document</a>"
                        f"<a href=\"/runs\">loop runs</a><a href=\"/docs\">API</a></nav></header>{body}"
                        f"{f'<script>{script}</script>' if script else ''}</body></html>")


@router.get("/", response_class=HTMLResponse)
def home(service: ServiceDep) -> HTMLResponse:
    """Drop a document, see the champion's reading and the latest challenger's beside it."""
    listing = models(service)
    champion = listing.champions.get("general") or f"base:{listing.base_model}"
    options = "".join(f'<option value="{html.escape(b)}">{html.escape(b)}</option>' for b in listing.businesses)
    columns = [("champion", f"champion ({business_label(None)}): {champion}")]
    if listing.challenger:
        columns.append(("challenger", f"latest challenger: {listing.challenger}"))
    readings = "".join(f'<section class="reading"><h2 id="{slot}-title">{html.escape(title)}</h2>'
                       f'<div class="model" id="{slot}-model"></div><pre id="{slot}-text"></pre></section>'
                       for slot, title in columns)
    body = (f'<form id="read-form"><input type="file" id="file" name="file" accept="image/*,application/pdf"> '
            f'<label>business <select id="business"><option value="">general</option>{options}</select></label> '
            f'<button id="read" type="submit">Read</button> <span id="status"></span></form>'
            f'<div class="columns{"" if listing.challenger else " one"}">{readings}</div>'
            f'<p class="model">Personal data is redacted (<mark class="pii">[SSN]</mark>); words one model read and '
            f'the other did not are <mark class="diff">marked</mark>.</p>'
            f'<script type="application/json" id="challenger-name">{json.dumps(listing.challenger)}</script>')
    return _page("ocrloop", body, _SCRIPT)


@router.get("/runs", response_class=HTMLResponse)
async def runs(service: ServiceDep) -> HTMLResponse:
    """The loop's runs and decisions, CER per category per model version, loss and validation curves."""
    report = await asyncio.to_thread(render_report, service.config.registry_location)
    body = report.split("<body>", 1)[1].rsplit("</body>", 1)[0]
    return _page("ocrloop runs", f'<div id="runs">{body}</div>')
