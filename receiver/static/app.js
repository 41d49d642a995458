// jscc-stream viewer: pictures and per-frame statistics over one WebSocket, charts on plain
// canvases (no libraries: the page must work offline), shim controls through the receiver, and
// the browser's camera sent to `jscc-send --source webrtc` over WebRTC.
"use strict";

const $ = (id) => document.getElementById(id);
const MAX_POINTS = 300;
const params = new URLSearchParams(location.search);

// What the page exposes for tests and curious people (window.jscc in the console).
const state = {
  ws: false, framesDrawn: 0, originalsDrawn: 0, statsFrames: 0, chartDraws: 0, fps: 0,
  serverFps: 0, camera: "off", cameraError: null, lastControl: null, shim: null,
  series: { blocks: [], loss: [], psnr: [], latency: [] }, blocksExpected: 8, lastFrameId: null,
};
window.jscc = state;

// ---------------------------------------------------------------- pictures
const shownTimes = [];
function countShown() {
  const now = performance.now();
  shownTimes.push(now);
  while (shownTimes.length && now - shownTimes[0] > 1000) shownTimes.shift();
}
setInterval(() => {
  const now = performance.now();
  while (shownTimes.length && now - shownTimes[0] > 1000) shownTimes.shift();
  state.fps = shownTimes.length;
  $("fps").textContent = state.fps;
}, 250);

// One decode in flight per canvas; a newer picture replaces a waiting one (never a backlog).
function makePainter(canvas, onDrawn) {
  const ctx = canvas.getContext("2d");
  let busy = false, pending = null;
  async function paint(blob) {
    busy = true;
    try {
      const bmp = await createImageBitmap(blob);
      if (canvas.width !== bmp.width || canvas.height !== bmp.height) {
        canvas.width = bmp.width; canvas.height = bmp.height;
      }
      ctx.drawImage(bmp, 0, 0);
      bmp.close();
      onDrawn();
    } catch (e) { /* a truncated JPEG: skip it */ }
    busy = false;
    if (pending) { const b = pending; pending = null; paint(b); }
  }
  return (blob) => { if (busy) pending = blob; else paint(blob); };
}
const paintReceived = makePainter($("received"), () => { state.framesDrawn++; countShown(); });
const paintOriginal = makePainter($("original"), () => { state.originalsDrawn++; });

// ---------------------------------------------------------------- statistics and charts
function push(arr, v) { arr.push(v); if (arr.length > MAX_POINTS) arr.shift(); }
const fmt = (v, d, unit) => (v === null || v === undefined) ? "–" : v.toFixed(d) + unit;

function onStats(msg) {
  for (const f of msg.frames) {
    state.statsFrames++;
    state.blocksExpected = f.blocks_expected || state.blocksExpected;
    state.lastFrameId = f.frame_id;
    push(state.series.blocks, f.blocks);
    push(state.series.loss, 100 * f.loss);
    push(state.series.psnr, f.psnr);
    push(state.series.latency, f.latency_ms);
  }
  state.serverFps = msg.server_fps;
  const f = msg.frames[msg.frames.length - 1];
  if (f) {
    $("blocks").textContent = `${f.blocks}/${f.blocks_expected}` + (f.partial ? ` (+${f.partial} partial)` : "");
    $("loss").textContent = fmt(100 * f.loss, 0, " %");
    $("psnr").textContent = fmt(f.psnr, 1, " dB");
    $("latency").textContent = fmt(f.latency_ms, 0, " ms");
    $("ftype").textContent = !f.frame_type ? "–" : f.frame_type === "P" ? `P (ref −${f.ref_back})` : "I";
    $("frames").textContent = state.statsFrames;
  }
  chartsDirty = true;
}

function drawChart(canvas, data, opts) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || canvas.width, h = canvas.clientHeight || canvas.height;
  if (canvas.width !== Math.round(w * dpr)) { canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr); }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const vals = data.filter((v) => v !== null && v !== undefined && isFinite(v));
  let lo = opts.min ?? Math.min(...vals), hi = opts.max ?? Math.max(...vals);
  if (!vals.length) { lo = opts.min ?? 0; hi = opts.max ?? 1; }
  if (opts.max === undefined && vals.length) hi = Math.max(hi, lo + 1) * 1.1;
  if (hi <= lo) hi = lo + 1;
  const L = 34, R = 6, T = 6, B = 6, pw = w - L - R, ph = h - T - B;
  ctx.font = "10px system-ui"; ctx.fillStyle = "#98a2b3"; ctx.strokeStyle = "#2f3744"; ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = T + ph * i / 4, v = hi - (hi - lo) * i / 4;
    ctx.beginPath(); ctx.moveTo(L, y); ctx.lineTo(w - R, y); ctx.stroke();
    const digits = opts.digits ?? (hi - lo < 5 ? 1 : 0);
    if (vals.length || opts.max !== undefined) ctx.fillText(v.toFixed(digits), 2, y + 3);
  }
  if (!vals.length) { ctx.fillText(opts.empty || "no data", L + 8, T + ph / 2); return; }
  ctx.strokeStyle = opts.color; ctx.lineWidth = 1.5; ctx.beginPath();
  let pen = false;
  data.forEach((v, i) => {
    if (v === null || v === undefined || !isFinite(v)) { pen = false; return; }
    const x = L + pw * i / (MAX_POINTS - 1), y = T + ph * (1 - (Math.min(hi, Math.max(lo, v)) - lo) / (hi - lo));
    if (pen) ctx.lineTo(x, y); else ctx.moveTo(x, y);
    pen = true;
  });
  ctx.stroke();
}

let chartsDirty = false;
setInterval(() => {
  if (!chartsDirty) return;
  chartsDirty = false;
  const s = state.series;
  drawChart($("c-blocks"), s.blocks, { min: 0, max: state.blocksExpected, color: "#4fb3ff" });
  drawChart($("c-loss"), s.loss, { min: 0, max: 100, color: "#ff6b6b" });
  drawChart($("c-psnr"), s.psnr, { color: "#7ee787",
    empty: "no original known (camera source): PSNR needs --web-original" });
  drawChart($("c-latency"), s.latency, { min: 0, color: "#ffb454" });
  state.chartDraws++;
}, 200);

// ---------------------------------------------------------------- WebSocket
function connect() {
  const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
  ws.binaryType = "arraybuffer";
  ws.onopen = () => { state.ws = true; $("conn").textContent = "live"; $("conn").className = "pill on"; };
  ws.onclose = () => {
    state.ws = false; $("conn").textContent = "disconnected, retrying…"; $("conn").className = "pill off";
    setTimeout(connect, 1000);
  };
  ws.onmessage = (ev) => {
    if (typeof ev.data === "string") {
      const msg = JSON.parse(ev.data);
      if (msg.type === "stats") onStats(msg);
      return;
    }
    const kind = new DataView(ev.data).getUint8(0);
    const blob = new Blob([new Uint8Array(ev.data, 5)], { type: "image/jpeg" });
    if (kind === 0) paintReceived(blob);
    else if (kind === 1 && !cameraStream) paintOriginal(blob);
  };
}

// ---------------------------------------------------------------- shim controls
function controlMsg(text) { $("control-msg").textContent = text; }

async function shimPost(what, body) {
  try {
    const r = await fetch(`/api/shim/${what}`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    const j = await r.json().catch(() => ({}));
    if (!r.ok) { controlMsg(`${what}: ${j.error || r.status}`); return false; }
    state.lastControl = { what, body, at: Date.now() };
    controlMsg(`${what} applied`);
    showShim(j);
    return true;
  } catch (e) { controlMsg(`${what}: ${e}`); return false; }
}

let controlsSynced = false;
function showShim(s) {
  state.shim = s;
  const f = s.forward, t = f.total;
  if (!controlsSynced) {  // the controls start from what the shim runs now
    controlsSynced = true;
    $("loss-spec").value = f.loss;
    if ([...$("loss-preset").options].some((o) => o.value === f.loss)) $("loss-preset").value = f.loss;
    $("rate-spec").value = f.rate_bps ? `${Math.round(f.rate_bps / 1000)}kbit` : "none";
  }
  const rate = f.rate_bps ? `${(f.rate_bps / 1e6).toFixed(2)} Mbit/s` : "unlimited";
  $("shim-state").textContent =
    `shim: loss ${f.loss}, rate ${rate}${f.priority ? " (priority)" : ""}; ` +
    `in ${t.in}, out ${t.out}, lost ${t.lost}, dropped ${t.dropped}, queued ${f.queued_packets}`;
}

async function pollShim() {
  try {
    const r = await fetch("/api/shim/stats");
    if (r.status === 404) {
      $("shim-state").textContent = "shim controls off: start jscc-recv with --web-shim URL";
      for (const el of $("controls").querySelectorAll("button, input, select")) el.disabled = true;
      return;
    }
    if (r.ok) showShim(await r.json());
    else $("shim-state").textContent = `shim: ${(await r.json().catch(() => ({}))).error || r.status}`;
  } catch (e) { /* the receiver restarted: try again */ }
  setTimeout(pollShim, 1000);
}

$("loss-preset").addEventListener("change", (e) => { $("loss-spec").value = e.target.value; });
$("loss-form").addEventListener("submit", (e) => { e.preventDefault(); shimPost("loss", { spec: $("loss-spec").value }); });
$("rate-form").addEventListener("submit", (e) => { e.preventDefault(); shimPost("rate", { rate: $("rate-spec").value }); });

// ---------------------------------------------------------------- camera over WebRTC
let cameraStream = null, pc = null, config = { sender_url: null };

function cameraState(text) { state.camera = text; $("cam-state").textContent = `camera ${text}`; }

async function startCamera() {
  $("cam-start").disabled = true;
  try {
    cameraState("starting…");
    cameraStream = await navigator.mediaDevices.getUserMedia({
      video: { width: { ideal: 320 }, height: { ideal: 240 }, frameRate: { ideal: 30 } }, audio: false });
    const video = $("camera");
    video.srcObject = cameraStream; video.hidden = false; $("original").hidden = true;
    $("orig-caption").textContent = "Original (your camera, local preview)";
    pc = new RTCPeerConnection();
    pc.onconnectionstatechange = () => cameraState(pc.connectionState);
    for (const track of cameraStream.getVideoTracks()) pc.addTrack(track, cameraStream);
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((resolve) => {  // aiortc takes one complete offer, no trickle ICE
      if (pc.iceGatheringState === "complete") return resolve();
      const check = () => { if (pc.iceGatheringState === "complete") resolve(); };
      pc.addEventListener("icegatheringstatechange", check);
      setTimeout(resolve, 3000);
    });
    const r = await fetch(config.sender_url + "/offer", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type }) });
    if (!r.ok) throw new Error(`sender answered ${r.status}: ${(await r.text()).slice(0, 200)}`);
    await pc.setRemoteDescription(await r.json());
    $("cam-stop").disabled = false;
  } catch (e) {
    state.cameraError = String(e);
    cameraState(`error: ${e.message || e} (is jscc-send --source webrtc running at ${config.sender_url}?)`);
    stopCamera(true);
  }
}

function stopCamera(keepState) {
  if (pc) { pc.close(); pc = null; }
  if (cameraStream) { for (const t of cameraStream.getTracks()) t.stop(); cameraStream = null; }
  $("camera").hidden = true; $("original").hidden = false;
  $("orig-caption").textContent = "Original";
  $("cam-start").disabled = false; $("cam-stop").disabled = true;
  if (!keepState) cameraState("off");
}

$("cam-start").addEventListener("click", startCamera);
$("cam-stop").addEventListener("click", () => stopCamera(false));

// ---------------------------------------------------------------- start
(async () => {
  try { config = await (await fetch("/api/config")).json(); } catch (e) { /* defaults */ }
  if (config.original) $("orig-caption").textContent = `Original (regenerated: ${config.original})`;
  connect();
  pollShim();
  chartsDirty = true;
  if (params.get("camera") === "1") startCamera();
})();
