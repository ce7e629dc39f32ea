// k2d's race page: one clip, two models (student, teacher), each transcript streamed as it arrives
// (POST /transcribe with stream=true: Server-Sent Events), latency and real-time factor per model,
// the speed-up, and a live panel from /metrics. Plain browser JavaScript: no framework, no build step.
"use strict";

const KEY_STORE = "k2d-api-key";
const METRICS_EVERY_MS = 3000;
const $ = (selector) => document.querySelector(selector);
const state = { file: null, duration: null, racing: false, recorder: null };

// ---- the API key: typed once, kept for this browser session, sent on every API call ----

function apiKey() {
  return sessionStorage.getItem(KEY_STORE) || "";
}

function saveKey() {
  const typed = $("#key").value.trim();
  const changed = typed !== apiKey();
  if (typed) sessionStorage.setItem(KEY_STORE, typed);
  else sessionStorage.removeItem(KEY_STORE);
  return changed;
}

function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  if (apiKey()) headers.Authorization = `Bearer ${apiKey()}`;
  return fetch(path, { ...options, headers });
}

// ---- errors: the server's JSON body {"error": {"message", "type", "code"}} as a sentence ----

const WHAT = {
  400: "The server found no usable audio in this file",
  401: "This server needs an API key, or the key is wrong: type it in the API key field at the top",
  404: "Not found on this server",
  408: "The upload did not arrive in time",
  413: "Too large for this server",
  415: "Not an audio file the server can decode",
  422: "The server refused an option",
  429: "The server is busy",
  500: "The server failed on this request",
  503: "The server is not taking requests right now",
};

function describe(status, message, retryAfter) {
  let text = WHAT[status] || `The server answered ${status}`;
  if (message && status !== 401) text += `: ${message}`;
  if ((status === 429 || status === 503) && retryAfter) text += `; try again in ${retryAfter} s`;
  return `${text} (HTTP ${status}).`;
}

async function readError(response) {
  let message = "";
  try {
    const body = await response.json();
    message = (body && body.error && body.error.message) || "";
  } catch {
    message = "";
  }
  return describe(response.status, message, response.headers.get("Retry-After"));
}

function unreachable(err) {
  return `Could not reach the server, or it closed the connection during the upload (a file too large?): ${err.message}`;
}

function notice(text, kind = "error") {
  const box = $("#notice");
  box.textContent = text || "";
  box.className = `notice ${kind}`;
  box.hidden = !text;
}

// ---- the models the server serves (GET /v1/models) ----

async function loadModels() {
  let response;
  try {
    response = await api("/v1/models");
  } catch (err) {
    notice(unreachable(err));
    return;
  }
  if (!response.ok) {
    notice(`${await readError(response)} The race uses the server's "student" and "teacher" until the models can be listed.`);
    return;
  }
  notice("");
  const models = (await response.json()).data || [];
  const student = pick(models, "student");
  const teacher = pick(models, "teacher") || models.find((m) => m.id !== (student && student.id));
  fill($("#student-model"), models, student);
  fill($("#teacher-model"), models, teacher);
}

function pick(models, role) {
  const ofRole = models.filter((m) => m.role === role);
  return ofRole.find((m) => m.default) || ofRole[0];
}

function fill(select, models, chosen) {
  if (!models.length) return;
  select.replaceChildren(...models.map((m) => {
    const option = new Option(`${m.id} (${m.role || "model"})`, m.id);
    if (m.parameters) option.title = `${(m.parameters / 1e6).toFixed(1)}M parameters`;
    option.selected = Boolean(chosen && m.id === chosen.id);
    return option;
  }));
}

// ---- the audio: dropped, picked or recorded ----

function audioDuration(file) {
  return new Promise((resolve) => {
    const audio = new Audio();
    const url = URL.createObjectURL(file);
    let settled = false;
    const done = (seconds) => {
      if (settled) return;
      settled = true;
      URL.revokeObjectURL(url);
      resolve(Number.isFinite(seconds) && seconds > 0 ? seconds : null);
    };
    audio.preload = "metadata";
    audio.onloadedmetadata = () => {
      if (audio.duration !== Infinity) return done(audio.duration);
      audio.ontimeupdate = () => done(audio.duration); // a recording without a length in its header
      audio.currentTime = 1e7;
    };
    audio.onerror = () => done(null);
    setTimeout(() => done(null), 5000);
    audio.src = url;
  });
}

async function choose(file, recordedSeconds = null) {
  if (!file) return;
  state.file = file;
  state.duration = (await audioDuration(file)) || recordedSeconds;
  const seconds = state.duration ? ` · ${state.duration.toFixed(1)} s of audio` : "";
  $("#chosen").textContent = `${file.name} · ${(file.size / 1024).toFixed(0)} KB${seconds}`;
  const player = $("#player");
  if (player.src) URL.revokeObjectURL(player.src);
  player.src = URL.createObjectURL(file);
  player.hidden = false;
  $("#race").disabled = false;
  race();
}

function setUpDrop() {
  const drop = $("#drop");
  const input = $("#file");
  input.addEventListener("change", () => {
    const file = input.files[0];
    input.value = ""; // choosing the same file again races again
    choose(file);
  });
  for (const kind of ["dragenter", "dragover"]) {
    drop.addEventListener(kind, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    choose(event.dataTransfer.files[0]);
  });
}

async function toggleRecording() {
  const button = $("#record");
  if (state.recorder) {
    state.recorder.stop();
    return;
  }
  if (!navigator.mediaDevices || !window.MediaRecorder) {
    notice("This browser gives no microphone to this page (only https pages and localhost get one).");
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (err) {
    notice(`No microphone: ${err.message}`);
    return;
  }
  const chunks = [];
  const recorder = new MediaRecorder(stream);
  const started = performance.now();
  const tick = setInterval(() => {
    button.textContent = `■ Stop (${((performance.now() - started) / 1000).toFixed(0)} s)`;
  }, 250);
  recorder.ondataavailable = (event) => event.data.size && chunks.push(event.data);
  recorder.onstop = () => {
    clearInterval(tick);
    stream.getTracks().forEach((track) => track.stop());
    state.recorder = null;
    button.textContent = "● Record";
    button.classList.remove("live");
    const type = recorder.mimeType || "audio/webm";
    const extension = type.includes("ogg") ? "ogg" : type.includes("mp4") ? "m4a" : "webm";
    choose(new File(chunks, `recording.${extension}`, { type }), (performance.now() - started) / 1000);
  };
  state.recorder = recorder;
  notice("");
  button.classList.add("live");
  recorder.start();
}

// ---- one model's run: the upload, its event stream, its figures ----

function lane(name) {
  const root = $(`#lane-${name}`);
  const part = (selector) => root.querySelector(selector);
  return {
    root, model: part(".model"), latency: part(".latency"), rtf: part(".rtf"), first: part(".first"), gain: part(".gain"),
    status: part(".status"), transcript: part(".transcript"),
  };
}

function reset(view, model, status) {
  view.model.textContent = model;
  for (const field of [view.latency, view.rtf, view.first, view.gain]) field.textContent = "–";
  view.transcript.textContent = "";
  view.root.className = view.root.className.replace(/ (running|done|failed)/g, "");
  view.status.className = "status";
  view.status.textContent = status;
}

function fail(view, message) {
  view.root.classList.add("failed");
  view.status.className = "status error";
  view.status.textContent = message;
  return null;
}

async function* serverEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const chunk = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = chunk.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (data) yield JSON.parse(data);
    }
  }
}

async function transcribe(view, model, file, language) {
  const form = new FormData();
  form.append("file", file, file.name);
  form.append("model", model);
  if (language) form.append("language", language);
  form.append("stream", "true");
  view.root.classList.add("running");
  view.status.textContent = "transcribing…";
  view.transcript.lang = language || "";
  const started = performance.now();
  const elapsed = () => (performance.now() - started) / 1000;
  const clock = setInterval(() => { view.latency.textContent = `${elapsed().toFixed(1)} s…`; }, 100);
  try {
    let response;
    try {
      response = await api("/transcribe", { method: "POST", body: form });
    } catch (err) {
      return fail(view, unreachable(err));
    }
    if (!response.ok) return fail(view, await readError(response));
    let finished = false;
    for await (const event of serverEvents(response)) {
      if (event.type === "transcript.text.delta") {
        if (view.first.textContent === "–") view.first.textContent = `${elapsed().toFixed(2)} s`;
        view.transcript.textContent += event.delta;
      } else if (event.type === "transcript.text.done") {
        view.transcript.textContent = event.text;
        finished = true;
      } else if (event.type === "error") {
        return fail(view, describe(event.error.code, event.error.message));
      }
    }
    if (!finished) return fail(view, "The answer stopped before the transcript was complete.");
    const latency = elapsed();
    view.latency.textContent = `${latency.toFixed(2)} s`;
    view.rtf.textContent = state.duration ? `${(state.duration / latency).toFixed(1)}×` : "–";
    view.rtf.title = state.duration ? `${state.duration.toFixed(1)} s of audio in ${latency.toFixed(2)} s` : "audio length unknown";
    if (!view.transcript.textContent) view.transcript.textContent = "(no speech found)";
    view.root.classList.add("done");
    view.status.textContent = "done";
    return latency;
  } catch (err) {
    return fail(view, `The answer could not be read: ${err.message}`);
  } finally {
    clearInterval(clock);
    view.root.classList.remove("running");
  }
}

// ---- the race ----

async function race() {
  if (!state.file || state.racing) return;
  if (saveKey()) loadModels();
  state.racing = true;
  $("#race").disabled = true;
  const file = state.file;
  const language = $("#language").value;
  const together = $("#together").checked;
  const runs = [["student", $("#student-model").value], ["teacher", $("#teacher-model").value]];
  const views = runs.map(([name, model]) => {
    const view = lane(name);
    reset(view, model, together ? "starting…" : "waiting for the other model to finish…");
    return view;
  });
  setVerdict("–", together ? "Both transcribing at once…" : "Transcribing one after the other…");
  let latencies;
  let cold = [];
  try {
    cold = await coldModels(runs.map(([, model]) => model));
    if (together) {
      latencies = await Promise.all(runs.map(([, model], i) => transcribe(views[i], model, file, language)));
    } else {
      latencies = [];
      for (const [i, [, model]] of runs.entries()) latencies.push(await transcribe(views[i], model, file, language));
    }
  } finally {
    state.racing = false;
    $("#race").disabled = false;
  }
  const [student, teacher] = latencies;
  if (student && teacher) {
    // the figure is the two latencies the lanes show (to 10 ms) divided, so a reader's own division agrees with it
    const shown = (seconds) => Math.max(Number(seconds.toFixed(2)), 0.01);
    const speedup = shown(teacher) / shown(student);
    views[0].gain.textContent = `${speedup.toFixed(1)}×`;
    views[1].gain.textContent = "baseline";
    setVerdict(`${speedup.toFixed(1)}×`, speedup >= 1
      ? `The student is ${speedup.toFixed(1)}× faster than the teacher (${teacher.toFixed(2)} s ÷ ${student.toFixed(2)} s).`
      : `The student is slower than the teacher here (${teacher.toFixed(2)} s ÷ ${student.toFixed(2)} s).`);
    if (cold.length) {
      $("#verdict-text").textContent += ` ${cold.join(" and ")} had served no request since the server started, and a ` +
        "first request includes warming up: race again for a fair figure.";
    }
  } else {
    setVerdict("–", "No speed-up: a model did not finish (its column says why).");
  }
  refreshMetrics();
}

async function coldModels(names) {
  // Models with no successful request since the server started (from its /metrics): their first one warms up.
  try {
    const response = await api("/metrics");
    if (!response.ok) return [];
    const { models } = summarise(parseMetrics(await response.text()));
    return names.filter((name) => !["student", "teacher"].includes(name))
      .filter((name) => !models.has(name) || models.get(name).requests - models.get(name).failed <= 0);
  } catch {
    return [];
  }
}

function setVerdict(figure, text) {
  $("#speedup").textContent = figure;
  $("#verdict-text").textContent = text;
}

// ---- the live panel: the server's own Prometheus text ----

function parseMetrics(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const found = line.match(/^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/);
    if (!found) continue;
    const labels = {};
    for (const [, name, value] of (found[2] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[name] = value;
    const value = found[3] === "+Inf" ? Infinity : found[3] === "-Inf" ? -Infinity : Number(found[3]);
    samples.push({ name: found[1], labels, value });
  }
  return samples;
}

function median(buckets) {
  // Prometheus' histogram_quantile(0.5): linear inside the bucket that holds the middle request
  const sorted = buckets.map((b) => [b.labels.le === "+Inf" ? Infinity : Number(b.labels.le), b.value])
    .sort((a, b) => a[0] - b[0]);
  const total = sorted.length ? sorted[sorted.length - 1][1] : 0;
  if (!total) return null;
  let lower = 0;
  let below = 0;
  for (const [upper, count] of sorted) {
    if (count >= total / 2) {
      if (upper === Infinity) return lower;
      return lower + (upper - lower) * ((total / 2 - below) / Math.max(count - below, 1e-9));
    }
    lower = upper;
    below = count;
  }
  return null;
}

function summarise(samples) {
  const models = new Map();
  const row = (model) => {
    if (!models.has(model)) models.set(model, { requests: 0, failed: 0, buckets: [], sum: 0, count: 0, rtfx: null });
    return models.get(model);
  };
  const speedups = [];
  for (const s of samples) {
    const model = s.labels.model;
    if (s.name === "k2d_requests_total" && model && model !== "none") {
      row(model).requests += s.value;
      if (!String(s.labels.status).startsWith("2")) row(model).failed += s.value;
    } else if (s.name === "k2d_request_seconds_bucket" && model && model !== "none") {
      row(model).buckets.push(s);
    } else if (s.name === "k2d_request_seconds_sum" && model && model !== "none") {
      row(model).sum = s.value;
    } else if (s.name === "k2d_request_seconds_count" && model && model !== "none") {
      row(model).count = s.value;
    } else if (s.name === "k2d_rtfx" && model) {
      row(model).rtfx = s.value;
    } else if (s.name === "k2d_student_speedup") {
      speedups.push(s);
    }
  }
  return { models, speedups };
}

function showMetrics({ models, speedups }) {
  const rows = [...models.entries()].filter(([, m]) => m.requests || m.rtfx).map(([model, m]) => {
    const p50 = median(m.buckets);
    const mean = m.count ? `${(m.sum / m.count).toFixed(2)} s` : "–";
    const cells = [model, String(m.requests), String(m.failed), p50 === null ? "–" : `≈${p50.toFixed(2)} s`, mean,
      m.rtfx ? `${m.rtfx.toFixed(1)}×` : "–"];
    const tr = document.createElement("tr");
    tr.dataset.model = model;
    tr.replaceChildren(...cells.map((text) => Object.assign(document.createElement("td"), { textContent: text })));
    return tr;
  });
  const body = $("#metrics-rows");
  if (rows.length) body.replaceChildren(...rows);
  $("#gauge").textContent = speedups.length
    ? speedups.map((s) => `k2d_student_speedup ${s.labels.student} over ${s.labels.teacher}: ${s.value.toFixed(1)}× ` +
      "(the student's audio seconds per engine second ÷ the teacher's, last 60 s)").join(" · ")
    : "k2d_student_speedup: no figure yet (it needs both models to have run in the last minute)";
}

async function refreshMetrics() {
  if (document.hidden) return;
  const age = $("#metrics-age");
  try {
    const response = await api("/metrics");
    if (!response.ok) {
      age.textContent = `· ${await readError(response)}`;
      return;
    }
    showMetrics(summarise(parseMetrics(await response.text())));
    age.textContent = `· updated ${new Date().toLocaleTimeString()}`;
  } catch (err) {
    age.textContent = `· ${unreachable(err)}`;
  }
}

// ---- start ----

// the two columns, student first, from one template
for (const [name, title] of [["student", "Student"], ["teacher", "Teacher"]]) {
  const column = $("#lane-template").content.firstElementChild.cloneNode(true);
  column.id = `lane-${name}`;
  column.classList.add(name);
  column.querySelector(".role").textContent = title;
  $(".lanes").append(column);
}
$("#key").value = apiKey();
$("#key").addEventListener("change", () => {
  if (saveKey()) {
    loadModels();
    refreshMetrics();
  }
});
$("#race").addEventListener("click", race);
$("#record").addEventListener("click", toggleRecording);
setUpDrop();
loadModels();
refreshMetrics();
setInterval(refreshMetrics, METRICS_EVERY_MS);
