// vaelab explore: the page. Plain JavaScript, no build step, nothing loaded from elsewhere.
// The server decodes; the page asks, throttled: at most one decode in flight, and while it
// is in flight only the latest wish waits (older ones are dropped), sent on the next frame.
// The current picture carries its code in data attributes (data-code, data-cls), so a test
// can check it against the model's own decode.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                   "#bcbd22", "#17becf", "#393b79", "#e7969c", "#637939", "#d6616b", "#8ca252", "#ce6dbd"];
  const S = { info: null, code: null, what: "", draft: null, seq: 0, requests: 0, picked: null, pick: null, upload: null,
              hover: -1, a: null, b: null, strip: null, seed: 1, items: new Map(), view: null };

  // ------------------------------------------------------------------ requests
  function busy() {
    const b = S.requests > 0 || ch.inflight || ch.next !== null || ch.scheduled;
    document.body.dataset.busy = b ? "1" : "0";
  }
  async function api(path, body, type) {
    S.requests++; busy();
    try {
      const opts = body === undefined ? {} : { method: "POST", body: type ? body : JSON.stringify(body),
        headers: { "Content-Type": type || "application/json" } };
      const r = await fetch(path, opts);
      let data;
      try { data = await r.json(); } catch (e) { data = { error: `the server answered ${r.status} without JSON` }; }
      if (!r.ok) throw new Error(data.error || `HTTP ${r.status}`);
      return data;
    } finally { S.requests--; busy(); }
  }
  // The throttled channel for everything that follows the pointer (map, sliders, t).
  const ch = { inflight: false, next: null, scheduled: false };
  function ask(path, body, done) {
    ch.next = { path, body, done };
    if (!ch.scheduled) { ch.scheduled = true; requestAnimationFrame(pump); }
    busy();
  }
  async function pump() {
    ch.scheduled = false;
    if (ch.inflight || ch.next === null) { busy(); return; }
    const job = ch.next; ch.next = null; ch.inflight = true; busy();
    try { await job.done(await api(job.path, job.body)); } catch (e) { showError(e.message); }
    finally {
      ch.inflight = false;
      if (ch.next !== null && !ch.scheduled) { ch.scheduled = true; requestAnimationFrame(pump); }
      busy();
    }
  }
  function showError(text) {
    $("message-text").textContent = text; $("message").hidden = false; $("message").dataset.error = text;
  }
  async function item(i) {
    if (!S.items.has(i)) S.items.set(i, await api(`/api/item/${i}`));
    return S.items.get(i);
  }
  function cls() { return S.info.conditional ? Number($("decode-class").value) : undefined; }
  function withCls(body) { if (S.info.conditional) body.cls = cls(); return body; }
  const fmt = (v) => (Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(2));

  // ------------------------------------------------------------------ the current picture
  async function show(r, recenter, what) {
    const img = $("view");
    if (what !== undefined) S.what = what;
    $("view-caption").textContent = S.what + (r.cls !== null && r.cls !== undefined ? `, as class ${S.info.classes[r.cls]}` : "");
    img.src = r.png;
    try { await img.decode(); } catch (e) { /* a broken image shows as broken */ }
    S.code = r.code.slice();
    img.dataset.code = JSON.stringify(r.code);
    img.dataset.cls = r.cls === null || r.cls === undefined ? "" : String(r.cls);
    img.dataset.point = r.point ? JSON.stringify(r.point) : "";
    img.dataset.seq = String(++S.seq);
    if (recenter) centreSliders(r.code); else S.code.forEach((v, i) => { $(`out-${i}`).value = fmt(v); });
    drawMap();
  }
  function decodeCode(code, recenter, what) {
    S.draft = code.slice();
    ask("/api/decode", withCls({ code }), (r) => show(r, recenter, what));
  }

  // ------------------------------------------------------------------ sliders
  function buildSliders() {
    const box = $("sliders");
    const kl = S.info.dims.some((d) => d.kl !== null);
    $("slider-caption").textContent = (kl ? "labelled with KL(q||p) per dimension (nats, mean over the images)"
      : "labelled with the spread of the codes") + `; sliders span ±${S.info.slider_spreads} spreads`;
    S.info.dims.forEach((d) => {
      const label = document.createElement("label");
      label.htmlFor = `dim-${d.index}`;
      label.textContent = `z${d.index} ` + (d.kl !== null ? `KL ${d.kl.toFixed(2)}` : `sd ${d.spread.toFixed(2)}`);
      if (!d.active) { const s = document.createElement("span"); s.className = "inactive"; s.textContent = " inactive"; label.append(s); }
      label.title = d.active ? "active: its code varies across the images" : "inactive: its code barely varies across the images (variance under 0.01)";
      const input = Object.assign(document.createElement("input"), { type: "range", id: `dim-${d.index}` });
      input.dataset.dim = String(d.index);
      input.addEventListener("input", () => {
        const code = (S.draft || S.code).slice();
        code[d.index] = Number(input.value);
        decodeCode(code, false, `after moving z${d.index}`);
      });
      const out = Object.assign(document.createElement("output"), { id: `out-${d.index}` });
      box.append(label, input, out);
    });
  }
  function centreSliders(code) {
    S.draft = code.slice();
    S.info.dims.forEach((d) => {
      const input = $(`dim-${d.index}`), half = S.info.slider_spreads * d.spread;
      input.min = String(code[d.index] - half); input.max = String(code[d.index] + half);
      input.step = String(half / 100); input.value = String(code[d.index]);
      $(`out-${d.index}`).value = fmt(code[d.index]);
    });
  }

  // ------------------------------------------------------------------ map
  const map = { canvas: null, layer: null, scale: 1, cx: 0, cy: 0, size: 540, dragging: false };
  function colour(label) { return label === null || label === undefined ? "#555" : PALETTE[label % PALETTE.length]; }
  function setupMap() {
    const pts = S.info.points, c = $("map"), dpr = window.devicePixelRatio || 1;
    map.canvas = c; c.width = map.size * dpr; c.height = map.size * dpr;
    let [x0, x1, y0, y1] = [Infinity, -Infinity, Infinity, -Infinity];
    for (const [x, y] of pts) { x0 = Math.min(x0, x); x1 = Math.max(x1, x); y0 = Math.min(y0, y); y1 = Math.max(y1, y); }
    // one scale for both axes, so distances on the map mean the same in every direction
    map.scale = (map.size * 0.92) / Math.max(x1 - x0, y1 - y0, 1e-9);
    map.cx = (x0 + x1) / 2; map.cy = (y0 + y1) / 2;
    map.layer = document.createElement("canvas"); map.layer.width = c.width; map.layer.height = c.height;
    const g = map.layer.getContext("2d"); g.scale(dpr, dpr); g.fillStyle = "#fff"; g.fillRect(0, 0, map.size, map.size);
    g.globalAlpha = 0.65;
    const radius = pts.length > 2000 ? 1.6 : pts.length > 300 ? 2.2 : 3;
    pts.forEach((p, i) => {
      const [u, v] = toPx(p); g.fillStyle = colour(S.info.labels ? S.info.labels[i] : null);
      g.beginPath(); g.arc(u, v, radius, 0, 2 * Math.PI); g.fill();
    });
    const legend = $("legend");
    if (S.info.labels && S.info.classes) {
      const present = new Set(S.info.labels);
      S.info.classes.forEach((name, k) => {
        if (!present.has(k)) return;
        const span = document.createElement("span"), dot = document.createElement("i");
        dot.style.background = colour(k); span.append(dot, name); legend.append(span);
      });
    }
    c.addEventListener("pointerdown", (e) => { map.dragging = true; c.setPointerCapture(e.pointerId); pickSpot(e); });
    c.addEventListener("pointermove", (e) => (map.dragging ? pickSpot(e) : hoverAt(e)));
    c.addEventListener("pointerup", () => { map.dragging = false; });
    c.addEventListener("pointercancel", () => { map.dragging = false; });
    drawMap();
  }
  function toPx([x, y]) { return [map.size / 2 + (x - map.cx) * map.scale, map.size / 2 - (y - map.cy) * map.scale]; }
  function fromPx(u, v) { return [map.cx + (u - map.size / 2) / map.scale, map.cy - (v - map.size / 2) / map.scale]; }
  function eventPoint(e) { const r = map.canvas.getBoundingClientRect(); return [e.clientX - r.left, e.clientY - r.top]; }
  function nearest(u, v, radius) {
    let best = -1, bd = radius * radius;
    S.info.points.forEach((p, i) => { const [a, b] = toPx(p), d = (a - u) ** 2 + (b - v) ** 2; if (d < bd) { bd = d; best = i; } });
    return best;
  }
  function drawMap() {
    if (!map.canvas) return;
    const g = map.canvas.getContext("2d"), dpr = window.devicePixelRatio || 1;
    g.setTransform(1, 0, 0, 1, 0, 0); g.drawImage(map.layer, 0, 0); g.setTransform(dpr, 0, 0, dpr, 0, 0);
    const mark = (p, text, fill) => {
      const [u, v] = toPx(p); g.fillStyle = fill; g.strokeStyle = "#000"; g.lineWidth = 1.5;
      g.beginPath(); g.arc(u, v, 7, 0, 2 * Math.PI); g.fill(); g.stroke();
      g.fillStyle = "#fff"; g.font = "bold 10px sans-serif"; g.textAlign = "center"; g.textBaseline = "middle"; g.fillText(text, u, v + 0.5);
    };
    if (S.hover >= 0) { const [u, v] = toPx(S.info.points[S.hover]); g.strokeStyle = "#000"; g.lineWidth = 1.5; g.beginPath(); g.arc(u, v, 5, 0, 2 * Math.PI); g.stroke(); }
    if (S.a) mark(S.a.point, "A", "#4a72d8");
    if (S.b) mark(S.b.point, "B", "#d8794a");
    if (S.upload) mark(S.upload.point, "U", "#2a9d5a");
    if (S.pick) {
      const [u, v] = toPx(S.pick); g.strokeStyle = "#d00"; g.lineWidth = 2; g.beginPath();
      g.moveTo(u - 9, v); g.lineTo(u + 9, v); g.moveTo(u, v - 9); g.lineTo(u, v + 9); g.stroke();
    }
  }
  function pickSpot(e) {
    const [u, v] = eventPoint(e), point = fromPx(u, v);
    S.pick = point; drawMap();
    const what = S.info.projection.exact ? "the spot on the map" : "the code of the image nearest to the spot";
    ask("/api/decode", withCls({ point }), async (r) => { await show(r, true, what); setPicked(r.nearest); });
  }
  let hoverWanted = -1, hoverBusy = false;
  async function hoverAt(e) {
    const [u, v] = eventPoint(e), i = nearest(u, v, 8);
    if (i === S.hover) return;
    S.hover = i; drawMap(); hoverWanted = i;
    if (i < 0 || hoverBusy) return;
    hoverBusy = true;  // one item request at a time; then the latest hovered point, if it moved on
    try {
      while (hoverWanted >= 0) {
        const want = hoverWanted, it = await item(want);
        if (want === hoverWanted) { hoverWanted = -1; showHover(it); }
      }
    } catch (err) { showError(err.message); } finally { hoverBusy = false; }
  }
  function describe(it) { return `image #${it.index}` + (it.label !== null ? ` (${S.info.classes ? S.info.classes[it.label] : it.label})` : ""); }
  function showHover(it) {
    $("hover-image").src = it.image; $("hover-recon").src = it.recon;
    $("hover-caption").textContent = describe(it) + ": the image and its reconstruction";
  }

  // ------------------------------------------------------------------ picked image, A and B
  async function setPicked(i) {
    const it = await item(i);
    S.picked = { code: it.code, png: it.image, point: it.point, index: i, cls: it.model_cls };
    $("picked-image").src = it.image; $("picked-image").hidden = false;
    $("picked-caption").textContent = `Nearest image: ${describe(it)}.`;
    ["picked-code", "set-a", "set-b"].forEach((id) => { $(id).disabled = false; });
  }
  async function decodeItem(i) {
    const it = await item(i);
    if (S.info.conditional && it.model_cls !== null) $("decode-class").value = String(it.model_cls);
    S.pick = it.point; await setPicked(i); decodeCode(it.code, true, `the code of ${describe(it)}`);
  }
  function setEnd(which) {
    S[which] = { ...S.picked };
    $(`end-${which}`).src = S.picked.png;
    $("interp-run").disabled = !(S.a && S.b);
    drawMap();
  }
  async function interpolate() {
    const steps = Math.max(2, Math.min(32, Number($("interp-steps").value) || 10));
    const t = Array.from({ length: steps }, (_, k) => k / (steps - 1));
    const body = withCls({ a: S.a.code, b: S.b.code, t, mode: $("interp-mode").value });
    try {
      const r = await api("/api/interpolate", body);
      S.strip = body;
      const strip = $("strip"); strip.textContent = "";
      r.pngs.forEach((png, k) => {
        const img = Object.assign(document.createElement("img"), { src: png, className: "px", title: `t = ${r.t[k].toFixed(2)}` });
        img.dataset.code = JSON.stringify(r.codes[k]); img.dataset.t = String(r.t[k]); img.dataset.cls = r.cls === null ? "" : String(r.cls);
        img.addEventListener("click", () => show({ png, code: r.codes[k], cls: r.cls }, true, `A to B at t = ${r.t[k].toFixed(2)} (${r.mode})`));
        strip.append(img);
      });
      $("interp-caption").textContent = `${r.mode} path, ${steps} frames from A to B`;
      $("interp-t").disabled = false;
    } catch (e) { showError(e.message); }
  }
  function interpolateAt(t) {
    $("interp-t-out").value = t.toFixed(2);
    ask("/api/interpolate", { ...S.strip, t: [t] },
        (r) => show({ png: r.pngs[0], code: r.codes[0], cls: r.cls }, true, `A to B at t = ${t.toFixed(2)} (${r.mode})`));
  }

  // ------------------------------------------------------------------ samples, uploads, anomalies
  function setupSamplers() {
    const box = $("sampler-buttons"), sel = $("sample-class");
    if (!S.info.samplers.length) { $("sample-caption").textContent = "No sampler applies to this run."; $("sample-class-row").hidden = true; return; }
    S.info.samplers.forEach((s) => {
      const b = Object.assign(document.createElement("button"), { textContent: s.name, title: s.note });
      b.dataset.sampler = s.name; b.addEventListener("click", () => sample(s)); box.append(b, " ");
    });
    const withClass = S.info.samplers.filter((s) => s.takes_class).map((s) => s.name);
    if (!withClass.length || !S.info.classes) { $("sample-class-row").hidden = true; return; }
    sel.append(new Option("every class", ""));
    S.info.classes.forEach((name, k) => sel.append(new Option(name, String(k))));
    $("sample-class-row").title = `used by ${withClass.join(", ")}`;
  }
  async function sample(s) {
    const body = { sampler: s.name, n: 16, seed: S.seed++ };
    if (s.takes_class && $("sample-class").value !== "") body.cls = Number($("sample-class").value);
    $("sample-caption").textContent = `drawing from ${s.name}` + (s.name === "prior" ? "..." : " (fitted on the training codes on first use)...");
    try {
      const r = await api("/api/sample", body), grid = $("samples");
      grid.textContent = "";
      r.pngs.forEach((png, k) => {
        const img = Object.assign(document.createElement("img"), { src: png, className: "px" });
        const c = r.classes ? r.classes[k] : null;
        img.dataset.code = JSON.stringify(r.codes[k]);
        img.addEventListener("click", () => {
          if (S.info.conditional && c !== null) $("decode-class").value = String(c);
          if (S.info.continuous) decodeCode(r.codes[k], true, `a sample from ${s.name}`);
        });
        grid.append(img);
      });
      $("sample-caption").textContent = `${r.pngs.length} samples from ${s.name} (seed ${r.seed}` +
        (r.cls !== null && r.cls !== undefined ? `, class ${S.info.classes[r.cls]})` : ")") + (S.info.continuous ? "; click one to decode it above" : "");
    } catch (e) { $("sample-caption").textContent = ""; showError(e.message); }
  }
  async function upload(file) {
    if (!file) return;
    if (file.size > S.info.max_upload_mb * 1048576) { showError(`${file.name} is larger than ${S.info.max_upload_mb} MB`); return; }
    try {
      const r = await api("/api/upload", file, file.type || "application/octet-stream");
      $("upload-input").src = r.input; $("upload-recon").src = r.recon;
      $("upload-caption").textContent = `${file.name}, resized to the model's input and reconstructed` +
        (S.info.continuous ? "; placed on the map as U" : "") + (r.cls !== null && r.cls !== undefined ? `; most probable class ${S.info.classes[r.cls]}` : "");
      if (!S.info.continuous) return;
      if (S.info.conditional) $("decode-class").value = String(r.cls);
      S.upload = { code: r.code, png: r.input, point: r.point, index: null };
      S.picked = S.upload; S.pick = null;
      $("picked-image").src = r.input; $("picked-image").hidden = false;
      $("picked-caption").textContent = `Picked: your image ${file.name}.`;
      $("set-a").disabled = $("set-b").disabled = false; $("picked-code").disabled = true;
      await show(r, true, `the code of your image ${file.name}`);
    } catch (e) { showError(e.message); }
  }
  function setupUpload() {
    const drop = $("drop");
    $("upload").addEventListener("change", (e) => upload(e.target.files[0]));
    ["dragenter", "dragover"].forEach((t) => document.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
    ["dragleave", "drop"].forEach((t) => document.addEventListener(t, () => drop.classList.remove("over")));
    document.addEventListener("drop", (e) => { e.preventDefault(); upload(e.dataTransfer.files[0]); });
  }
  function setupAnomalies() {
    const a = S.info.anomalies, box = $("anomalies");
    $("anomaly-caption").textContent = `The ${a.items.length} highest of ${a.n} ${S.info.split} images by the ${a.score} of their ` +
      `reconstruction (median ${a.median.toPrecision(3)}): image, reconstruction, squared error (white = the largest shown).`;
    a.items.forEach((it) => {
      const card = document.createElement("div"); card.className = "card";
      for (const src of [it.image, it.recon, it.error]) card.append(Object.assign(document.createElement("img"), { src, className: "px" }));
      const cap = document.createElement("div");
      cap.textContent = `#${it.index}` + (it.label !== null && S.info.classes ? ` ${S.info.classes[it.label]}` : "") + ` · ${it.score.toPrecision(3)}`;
      card.append(cap);
      if (S.info.continuous) { card.title = "decode its code above"; card.addEventListener("click", () => decodeItem(it.index)); }
      box.append(card);
    });
  }

  // ------------------------------------------------------------------ start
  async function start() {
    try { S.info = await api("/api/info"); } catch (e) { showError(e.message); return; }
    const info = S.info;
    $("run-name").textContent = info.run;
    $("model").textContent = `${info.model}. Capabilities: ${info.capabilities.join(", ")}. ` +
      `${info.n} ${info.split} images, input ${info.input_shape.join("x")}` + (info.continuous ? `, latent dimension ${info.latent_dim}.` : ".");
    info.notes.forEach((n) => $("notes").append(Object.assign(document.createElement("li"), { textContent: n })));
    $("message-close").addEventListener("click", () => { $("message").hidden = true; });
    setupSamplers(); setupUpload(); setupAnomalies();
    if (!info.continuous) { document.body.classList.add("no-continuous"); document.body.dataset.ready = "1"; return; }
    if (info.conditional) {
      info.classes.forEach((name, k) => $("decode-class").append(new Option(name, String(k))));
      $("class-row").hidden = false;
      $("decode-class").addEventListener("change", () => S.code && decodeCode(S.draft || S.code, false));
    }
    info.interpolation.forEach((m) => $("interp-mode").append(new Option(m, m)));
    $("map-caption").textContent = `${info.projection.name}, ${info.n} ${info.split} images`;
    $("projection-note").textContent = info.projection.note;
    buildSliders(); setupMap();
    $("picked-code").addEventListener("click", () => S.picked && S.picked.index !== null && decodeItem(S.picked.index));
    $("set-a").addEventListener("click", () => setEnd("a"));
    $("set-b").addEventListener("click", () => setEnd("b"));
    $("interp-run").addEventListener("click", interpolate);
    $("interp-t").addEventListener("input", (e) => interpolateAt(Number(e.target.value)));
    await decodeItem(0);
    // ready once the first picture is up
    const wait = () => (document.body.dataset.busy === "0" && S.seq > 0 ? (document.body.dataset.ready = "1") : setTimeout(wait, 20));
    wait();
  }
  // For benchmarks and tests: one decode through the page's own path, resolved when the picture is shown.
  window.vaelabExplore = {
    decode: (code) => new Promise((resolve, reject) => {
      ch.next = null;
      api("/api/decode", withCls({ code })).then((r) => show(r, false)).then(resolve, reject);
    }),
    // where point i is drawn, in pixels from the map's top-left corner (to hover it)
    pointAt: (i) => toPx(S.info.points[i]),
  };
  start();
})();
