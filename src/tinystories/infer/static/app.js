// TinyStories playground: streams /v1/completions (with logprobs) and shows attention
// from /v1/internal/attention. Plain JS, no build step, no external resources.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { controller: null, prompt: "", ids: [], models: {}, attention: null, selected: null };

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

async function api(path, body) {
  const res = await fetch(path, body === undefined ? { headers: headers() }
    : { method: "POST", headers: headers(), body: JSON.stringify(body) });
  if (!res.ok) {
    let msg = res.status + " " + res.statusText;
    try { msg = (await res.json()).error.message; } catch (e) { /* not JSON */ }
    throw new Error(msg);
  }
  return res;
}

function setStatus(text) { $("status").textContent = text; }

function showError(text) {  // prominent, and kept until the next attempt
  $("error").textContent = text;
  $("error").hidden = !text;
}

async function loadModels() {
  try {
    const data = await (await api("/v1/models")).json();
    $("model").innerHTML = "";
    for (const m of data.data) {
      state.models[m.id] = m;
      $("model").add(new Option(m.id, m.id));
    }
    // The sliders start at the server's story preset and steering strength (infer/params.py), as
    // `sample` does: the card names them by their slider (and request field) ids.
    for (const [id, value] of Object.entries((data.data[0] || {}).sampling || {})) {
      $(id).value = value;
      $(id + "-val").textContent = value;
    }
    showModelInfo();
  } catch (e) { setStatus("Could not list models: " + e.message); }
}

function showModelInfo() {
  const m = state.models[$("model").value];
  if (!m) return;
  $("model-info").textContent = `${m.arch} · ${(m.parameters / 1e6).toFixed(2)}M params · ` +
    `${m.n_layer} layers × ${m.n_head} heads · context ${m.context_length}`;
  $("max_tokens").max = m.context_length - 1;
  const steer = $("steer");
  steer.innerHTML = "";
  steer.add(new Option("none", ""));
  for (const [name, hook] of Object.entries(m.directions || {})) steer.add(new Option(`${name} (${hook})`, name));
  fillSelect($("layer"), m.n_layer, (i) => "L" + i);
  fillSelect($("head"), m.n_head, (i) => "H" + i, true);
  updateRoom();
}

// The prompt takes part of the model's context: Max tokens can only use what is left.
let roomTimer = null;
function updateRoom() {
  clearTimeout(roomTimer);
  roomTimer = setTimeout(async () => {
    const model = $("model").value;
    if (!model) return;
    try {
      const r = await (await api("/v1/internal/tokenize", { model, prompt: $("prompt").value })).json();
      const slider = $("max_tokens");
      slider.max = Math.max(1, r.room);
      if (+slider.value > r.room) slider.value = Math.max(1, r.room);
      $("max_tokens-val").textContent = slider.value;
      $("room").textContent = r.room > 0
        ? `The prompt takes ${r.tokens} of ${r.context_length} tokens: up to ${r.room} new ones fit.`
        : `The prompt takes ${r.tokens} tokens, the whole context of ${r.context_length}: shorten it.`;
    } catch (e) { $("room").textContent = ""; }
  }, 250);
}

function fillSelect(sel, n, name, withMean) {
  const keep = sel.value;
  sel.innerHTML = "";
  if (withMean) sel.add(new Option("mean", "mean"));
  for (let i = 0; i < n; i++) sel.add(new Option(name(i), String(i)));
  if ([...sel.options].some((o) => o.value === keep)) sel.value = keep;
}

// Probability -> a red (unlikely) ... yellow ... green (likely) background.
function probColor(p) { return `hsl(${Math.round(120 * Math.sqrt(p))}, 75%, 80%)`; }

function tokenSpan(chunk) {
  const span = document.createElement("span");
  span.className = "tok";
  span.textContent = chunk.text;
  const lp = chunk.logprobs;
  const prob = Math.exp(lp.token_logprobs.reduce((a, b) => a + b, 0));
  span.style.background = probColor(prob);
  span.dataset.prob = prob.toPrecision(4);
  span.dataset.index = String(state.ids.length + lp.token_ids.length - 1);
  span.tooltip = { tokens: lp.tokens, logprobs: lp.token_logprobs, top: lp.top_logprobs, prob };
  span.addEventListener("mouseenter", (e) => showTooltip(e, span.tooltip));
  span.addEventListener("mousemove", moveTooltip);
  span.addEventListener("mouseleave", () => { $("tooltip").hidden = true; });
  span.addEventListener("click", () => selectToken(span));
  return span;
}

function esc(s) { return s.replace(/[&<>]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;" }[c])); }
function show(s) { return esc(JSON.stringify(s)); }

function showTooltip(e, t) {
  const rows = Object.entries(t.top.at(-1) || {})
    .map(([tok, lp]) => `<tr><td><code>${show(tok)}</code></td><td>${(100 * Math.exp(lp)).toFixed(1)}%</td></tr>`).join("");
  $("tooltip").innerHTML = `<div><code>${t.tokens.map(show).join(" ")}</code> · <b>${(100 * t.prob).toFixed(1)}%</b></div>` +
    (rows ? `<div>model's top choices:</div><table>${rows}</table>` : "");
  $("tooltip").hidden = false;
  moveTooltip(e);
}

function moveTooltip(e) {
  const tip = $("tooltip");
  tip.style.left = Math.min(e.clientX + 14, window.innerWidth - 290) + "px";
  tip.style.top = e.clientY + 16 + "px";
}

function parseEvents(buffer, onData) {
  // Server-sent events: "data: {...}\n\n" blocks; returns the unfinished remainder.
  const blocks = buffer.split("\n\n");
  const rest = blocks.pop();
  for (const block of blocks) {
    for (const line of block.split("\n")) {
      if (line.startsWith("data: ")) onData(line.slice(6));
    }
  }
  return rest;
}

async function generate() {
  const out = $("output");
  const previous = { nodes: [...out.childNodes], prompt: state.prompt, ids: state.ids };
  let started = false;
  const start = () => {  // the old story stays until the new one really begins
    if (started) return;
    started = true;
    state.prompt = body.prompt;
    state.ids = [];
    state.attention = null;
    out.innerHTML = "";
    const p = document.createElement("span");
    p.className = "prompt-text";
    p.textContent = state.prompt;
    out.appendChild(p);
    $("attention").innerHTML = '<span class="placeholder">Click a generated token to see which earlier tokens it attended to.</span>';
    $("att-top").innerHTML = "";
  };
  showError("");
  $("stats").textContent = "";
  const body = {
    model: $("model").value, prompt: $("prompt").value, stream: true, logprobs: 5,
    temperature: +$("temperature").value, top_p: +$("top_p").value, top_k: +$("top_k").value,
    min_p: +$("min_p").value, repetition_penalty: +$("repetition_penalty").value,
    max_tokens: +$("max_tokens").value, stream_options: { include_usage: true },
  };
  if ($("seed").value !== "") body.seed = parseInt($("seed").value, 10);
  if ($("steer").value) body.steer = [{ direction: $("steer").value, alpha: +$("steer_alpha").value }];
  state.controller = new AbortController();
  $("generate").disabled = true;
  $("stop").disabled = false;
  setStatus("Writing…");
  const t0 = performance.now();
  let finish = null, usage = null;
  try {
    const res = await fetch("/v1/completions", { method: "POST", headers: headers(),
      body: JSON.stringify(body), signal: state.controller.signal });
    if (!res.ok) {
      let msg = res.status + "";
      try { msg = (await res.json()).error.message; } catch (e) { /* not JSON */ }
      throw new Error(msg);
    }
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      buffer = parseEvents(buffer + decoder.decode(value, { stream: true }), (data) => {
        if (data === "[DONE]") return;
        const msg = JSON.parse(data);
        if (msg.error) throw new Error(msg.error.message);
        if (msg.usage) usage = msg.usage;
        start();
        for (const c of msg.choices) {
          if (c.logprobs && c.logprobs.token_ids.length) {
            out.appendChild(tokenSpan(c));
            state.ids.push(...c.logprobs.token_ids);
          }
          if (c.finish_reason) finish = c.finish_reason;
        }
      });
    }
    const secs = (performance.now() - t0) / 1000;
    const n = usage ? usage.completion_tokens : state.ids.length;
    $("stats").textContent = `${n} tokens in ${secs.toFixed(2)} s (${(n / secs).toFixed(0)} tokens/s) · ` +
      `finished: ${finish === "stop" ? "the story ended" : "token limit"}`;
    setStatus("Done. Hover a token for its probability, click it for attention.");
  } catch (e) {
    if (e.name === "AbortError") {
      setStatus("Stopped.");
    } else {
      setStatus("");
      showError("Error: " + e.message);
      if (!started) {  // nothing new was written: the previous story stays on the page
        out.replaceChildren(...previous.nodes);
        state.prompt = previous.prompt;
        state.ids = previous.ids;
      }
    }
  } finally {
    $("generate").disabled = false;
    $("stop").disabled = true;
    state.controller = null;
  }
}

async function selectToken(span) {
  document.querySelectorAll(".tok.selected").forEach((s) => s.classList.remove("selected"));
  span.classList.add("selected");
  const upto = +span.dataset.index;
  try {
    const res = await api("/v1/internal/attention", { model: $("model").value, prompt: state.prompt,
      completion_token_ids: state.ids.slice(0, upto + 1) });
    state.attention = await res.json();
    renderAttention();
  } catch (e) { showError("Attention failed: " + e.message); }
}

function renderAttention() {
  const a = state.attention;
  if (!a) return;
  const layer = +$("layer").value || 0;
  const head = $("head").value;
  const rows = a.attention[layer];
  const w = head === "mean" ? rows[0].map((_, j) => rows.reduce((s, r) => s + r[j], 0) / rows.length) : rows[+head];
  const max = Math.max(...w);
  const box = $("attention");
  box.innerHTML = "";
  w.forEach((x, j) => {
    const s = document.createElement("span");
    s.className = "att-tok" + (j === a.position ? " query" : "");
    s.textContent = j === 0 ? "[start]" : a.tokens[j];
    s.style.background = `rgba(108, 78, 227, ${(0.85 * x / max).toFixed(3)})`;
    s.style.color = x / max > 0.55 ? "#fff" : "";
    s.title = `${(100 * x).toFixed(1)}%`;
    s.dataset.weight = x.toFixed(4);
    box.appendChild(s);
  });
  const top = w.map((x, j) => [x, j]).sort((p, q) => q[0] - p[0]).slice(0, 8);
  $("att-top").innerHTML = top.map(([x, j]) =>
    `<li><b>${show(j === 0 ? "[start]" : a.tokens[j])}</b> ${(100 * x).toFixed(1)}%</li>`).join("");
}

for (const id of ["temperature", "top_p", "top_k", "min_p", "repetition_penalty", "max_tokens", "steer_alpha"]) {
  $(id).addEventListener("input", () => { $(id + "-val").textContent = $(id).value; });
}
$("model").addEventListener("change", showModelInfo);
$("layer").addEventListener("change", renderAttention);
$("head").addEventListener("change", renderAttention);
$("generate").addEventListener("click", generate);
$("stop").addEventListener("click", () => state.controller && state.controller.abort());
$("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) generate(); });
$("prompt").addEventListener("input", updateRoom);
loadModels();
