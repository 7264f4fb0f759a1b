// pccd serve: the page. Plain JavaScript, no build step, nothing loaded from the internet.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  jobs: [], job: null, detail: null, sort: { key: "id", dir: 1 },
  selected: null, structure: null, viewer: null, polling: false,
};

const COLUMNS = [ // [key, label, tooltip]
  ["id", "id"], ["formula", "formula"], ["atoms", "atoms", "atoms in the cell"],
  ["space_group", "space group", "space group at symprec 0.1 Å"],
  ["density", "density", "g/cm³"], ["min_distance", "d_min", "shortest distance, Å"],
  ["covalent_ratio", "d/(rᵢ+rⱼ)", "smallest distance over the covalent radii sum; plausible ≥ 0.7"],
  ["plausible", "plausible"], ["status", "status", "decoding"],
  ["e_above_hull", "E_hull", "energy above the convex hull after relaxation, eV/atom"],
  ["screen_status", "screen", "relaxation and hull"], ["novel", "novel"],
  ["sun", "S.U.N.", "stable (E_hull ≤ 0.1), unique and novel"], ["reason", "reason"],
];
const SCREEN_KEYS = new Set(["e_above_hull", "screen_status", "novel", "sun"]);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : String(c ?? ""));
  return node;
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  if (!response.ok) throw new Error((body && body.error) || `${response.status} ${response.statusText}`);
  return body;
}

function fmt(value, digits) {
  if (value === null || value === undefined || value === "") return "";
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (typeof value === "number" && digits !== undefined) return value.toFixed(digits);
  return String(value);
}

// ---- form -----------------------------------------------------------------------------------
$("job-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("form-error").textContent = "";
  const body = { n: Number($("f-n").value), seed: Number($("f-seed").value || 0) };
  if ($("f-model").value) body.model = $("f-model").value;
  // a hidden field is a condition the chosen model was not trained with: never sent
  const formula = $("f-formula-label").hidden ? "" : $("f-formula").value.trim();
  const elements = $("f-elements").value.split(/[,\s]+/).filter(Boolean);
  if (formula) body.formula = formula; else body.elements = elements;
  if (!$("f-band-gap-label").hidden && $("f-band-gap").value !== "") body.band_gap = Number($("f-band-gap").value);
  if ($("f-guidance").value !== "") body.guidance = Number($("f-guidance").value);
  if (!$("f-stability-row").hidden && $("f-stability").value) body.stability = $("f-stability").value;
  body.sampler = $("f-sampler").value;
  if ($("f-steps").value !== "") body.steps = Number($("f-steps").value);
  $("submit").disabled = true;
  try {
    const job = await api("/api/jobs", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    await refreshJobs();
    await openJob(job.id);
    pollSoon();
  } catch (err) {
    $("form-error").textContent = err.message;
  } finally {
    $("submit").disabled = false;
  }
});

// ---- job list -------------------------------------------------------------------------------
function progressText(job) {
  const p = job.progress || {};
  let text = `${p.done ?? 0}/${p.total ?? "?"}`;
  if (job.status === "queued" && job.position) text += ` · #${job.position} in queue`;
  if (job.status === "running" && job.seconds !== null) text += ` · ${job.seconds} s`;
  return text;
}

async function refreshJobs() {
  try {
    const data = await api("/api/jobs");
    state.jobs = data.jobs;
  } catch (err) { return; }
  const list = $("jobs");
  list.replaceChildren(...state.jobs.map((job) => {
    const title = job.formula || (job.elements || []).join("-") || "(CIF directory)";
    const screen = job.screen ? ` · screen ${job.screen.status}` : "";
    return el("li", { class: job.id === state.job ? "active" : "", "data-id": job.id, onclick: () => openJob(job.id) },
      el("span", { class: `badge ${job.status}` }, job.status), " ", el("b", {}, title),
      el("div", { class: "jid" }, job.id),
      el("div", { class: "muted" }, progressText(job) + screen));
  }));
}

// ---- one job --------------------------------------------------------------------------------
async function openJob(id) {
  if (state.job !== id) {
    state.job = id; state.selected = null; state.detail = null;
    $("table-body").replaceChildren();
  }
  document.querySelectorAll("#jobs li").forEach((li) => li.classList.toggle("active", li.dataset.id === id));
  await refreshJob();
}

async function refreshJob() {
  if (!state.job) return;
  let detail;
  try { detail = await api(`/api/jobs/${encodeURIComponent(state.job)}?cif=0`); } catch (err) {
    $("job-status").textContent = err.message; return;
  }
  if (detail.id !== state.job) return;
  state.detail = detail;
  $("job-title").textContent = `${detail.formula || (detail.elements || []).join("-")} — ${detail.id}`;
  const s = detail.settings || {};
  const bits = [`${detail.status}`, progressText(detail)];
  if (detail.model) bits.push(`model ${detail.model}`);
  if (s.sampler) bits.push(`${s.sampler} ${s.steps || "default"} steps, guidance ${s.guidance_scale}, seed ${s.seed}`);
  if (s.band_gap !== null && s.band_gap !== undefined) bits.push(`band gap ${s.band_gap} eV`);
  if (s.stability) bits.push(s.stability);
  $("job-status").replaceChildren(el("span", { class: `badge ${detail.status}` }, detail.status), " ",
    bits.slice(1).join(" · "), detail.error ? el("div", { class: "error" }, detail.error) : "");
  const p = detail.progress || {};
  $("job-bar").style.width = p.total ? `${(100 * p.done) / p.total}%` : "0";
  // rows arrive once per batch: show that sampling is under way before the first one
  $("job-bar").parentElement.classList.toggle("busy", detail.status === "running" && p.done < p.total);
  const sc = detail.screen;
  $("screen-btn").disabled = detail.status !== "done" || (sc && ["queued", "running"].includes(sc.status));
  $("screen-status").replaceChildren(sc ? el("span", {},
    el("span", { class: `badge ${sc.status}` }, `screen ${sc.status}`),
    ` ${sc.progress.done}/${sc.progress.total ?? "?"} relaxed`,
    sc.settings ? ` · ${sc.settings.mlip}` : "",
    sc.error ? el("div", { class: "error" }, sc.error) : "") : "");
  renderTable();
}

function rows() {
  if (!state.detail) return [];
  const words = $("filter").value.toLowerCase().split(/\s+/).filter(Boolean);
  let list = state.detail.structures.filter((r) => {
    if ($("ok-only").checked && r.status !== "ok") return false;
    if ($("plausible-only").checked && !r.plausible) return false;
    const text = COLUMNS.map(([k]) => fmt(r[k])).join(" ").toLowerCase();
    return words.every((w) => text.includes(w));
  });
  const { key, dir } = state.sort;
  list = list.slice().sort((a, b) => {
    const x = a[key], y = b[key];
    if (x === y) return 0;
    if (x === null || x === undefined) return 1;
    if (y === null || y === undefined) return -1;
    return (typeof x === "number" && typeof y === "number" ? x - y : String(x).localeCompare(String(y), undefined, { numeric: true })) * dir;
  });
  return list;
}

function renderTable() {
  // screen columns only where some row has a value (novelty needs --reference)
  const structures = state.detail ? state.detail.structures : [];
  const columns = COLUMNS.filter(([k]) => !SCREEN_KEYS.has(k)
    || structures.some((r) => r[k] !== undefined && r[k] !== null));
  $("table-head").replaceChildren(...columns.map(([key, label, tip]) => el("th", {
    "data-key": key, title: tip || label,
    class: state.sort.key === key ? (state.sort.dir > 0 ? "sorted-asc" : "sorted-desc") : "",
    onclick: () => {
      state.sort = { key, dir: state.sort.key === key ? -state.sort.dir : 1 };
      renderTable();
    },
  }, label)));
  const list = rows();
  const digits = { density: 3, min_distance: 3, covalent_ratio: 3, e_above_hull: 3 };
  $("table-body").replaceChildren(...list.map((r) => {
    const cells = columns.map(([key]) => {
      const v = r[key];
      const cls = key === "reason" ? "reason" : typeof v === "boolean" ? (v ? "yes" : "no") : "";
      const text = key === "reason" && r.screen_reason ? [r.reason, r.screen_reason].filter(Boolean).join("; ") : fmt(v, digits[key]);
      return el("td", key === "reason" ? { class: cls, title: text } : { class: cls }, text);
    });
    return el("tr", {
      "data-id": r.id, class: `${r.status !== "ok" ? "failed" : ""} ${r.id === state.selected ? "selected" : ""}`,
      onclick: () => selectStructure(r.id),
    }, ...cells);
  }));
  $("empty").textContent = !state.detail ? "Submit a job or open one from the list."
    : state.detail.structures.length === 0 ? (["queued", "running"].includes(state.detail.status) ? "Sampling…" : "No crystals.")
    : list.length === 0 ? "No row matches the filter." : "";
}

["filter", "ok-only", "plausible-only"].forEach((id) => $(id).addEventListener("input", renderTable));

$("screen-btn").addEventListener("click", async () => {
  if (!state.job) return;
  $("screen-btn").disabled = true;
  try {
    await api(`/api/jobs/${encodeURIComponent(state.job)}/screen`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: "{}",
    });
  } catch (err) {
    $("screen-status").replaceChildren(el("div", { class: "error" }, err.message));
    return;
  }
  await refreshJob();
  pollSoon();
});

// ---- viewer ---------------------------------------------------------------------------------
function colorOf(symbol) {
  const table = $3Dmol.elementColors.Jmol;
  const c = table[symbol] ?? table[symbol.toUpperCase()] ?? $3Dmol.elementColors.defaultColor;
  return "#" + c.toString(16).padStart(6, "0");
}

async function selectStructure(sid) {
  state.selected = sid;
  document.querySelectorAll("#table-body tr").forEach((tr) => tr.classList.toggle("selected", tr.dataset.id === sid));
  const row = state.detail.structures.find((r) => r.id === sid);
  $("relaxed").disabled = !(row && row.relaxed);
  if (!(row && row.relaxed)) $("relaxed").checked = false;
  await loadStructure();
}

async function loadStructure() {
  const sid = state.selected;
  if (!state.job || sid === null) return;
  const base = `/api/jobs/${encodeURIComponent(state.job)}/structures/${encodeURIComponent(sid)}`;
  const relaxed = $("relaxed").checked;
  const query = relaxed ? "?relaxed=1" : "";
  let s;
  try { s = await api(base + query); } catch (err) {
    $("viewer-title").textContent = `Structure ${sid}: ${err.message}`;
    state.structure = null; drawStructure(); $("downloads").replaceChildren(); $("lattice").replaceChildren();
    return;
  }
  state.structure = s;
  state.resetView = true;
  $("viewer-title").textContent = `${s.formula} (${s.cell_formula}) — ${sid}${relaxed ? ", relaxed" : ""}`;
  drawStructure();
  const row = state.detail.structures.find((r) => r.id === sid) || {};
  const L = s.lattice;
  const entries = [
    ["a, b, c (Å)", `${L.a.toFixed(3)}, ${L.b.toFixed(3)}, ${L.c.toFixed(3)}`],
    ["α, β, γ (°)", `${L.alpha.toFixed(2)}, ${L.beta.toFixed(2)}, ${L.gamma.toFixed(2)}`],
    ["volume (Å³)", `${L.volume.toFixed(2)} (${(L.volume / s.atoms).toFixed(2)} per atom)`],
    ["density (g/cm³)", s.density.toFixed(3)],
    ["atoms in cell", s.atoms],
  ];
  if (row.space_group && !relaxed) entries.push(["space group (0.1 Å)", row.space_group]);
  if (row.covalent_ratio !== null && row.covalent_ratio !== undefined) entries.push(["smallest d/(r_i+r_j)", `${row.covalent_ratio.toFixed(3)} (${row.plausible ? "plausible" : "too close"})`]);
  if (row.e_above_hull !== undefined && row.e_above_hull !== null) entries.push(["E_hull (eV/atom)", row.e_above_hull.toFixed(3)]);
  $("lattice").replaceChildren(...entries.map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v))));
  $("downloads").replaceChildren(...[["cif", "CIF"], ["extxyz", "extxyz"], ["vasp", "POSCAR"]].map(([ext, label]) =>
    el("a", { href: `${base}.${ext}${query}`, download: "", "data-format": ext }, `${label}${relaxed ? " (relaxed)" : ""}`)));
}

function drawStructure() {
  if (!state.viewer) {
    state.viewer = $3Dmol.createViewer($("viewer"), { backgroundColor: "white", antialias: true });
  }
  const v = state.viewer;
  v.clear();
  const s = state.structure;
  if (!s) { $("legend").replaceChildren(); v.render(); return; }
  const m = v.addModel();
  m.addAtoms(s.sites.map((site) => ({ elem: site.element, x: site.xyz[0], y: site.xyz[1], z: site.xyz[2] })));
  const M = s.lattice.matrix; // rows are the lattice vectors; 3Dmol wants them as columns
  m.setCrystMatrix(new $3Dmol.Matrix3(M[0][0], M[1][0], M[2][0], M[0][1], M[1][1], M[2][1], M[0][2], M[1][2], M[2][2]));
  if (state.resetView) { // a new crystal: look at it slightly from above and from the side
    const view = v.getView();
    v.setView([view[0], view[1], view[2], view[3], -0.1677, 0.2549, -0.0449, 0.9512]);
    state.resetView = false;
  }
  if ($("supercell").checked) v.replicateUnitCell(2, 2, 2, m);
  else v.replicateUnitCell(1, 1, 1, m); // images of atoms on cell faces, edges and corners
  v.setStyle({}, { sphere: { scale: 0.32, colorscheme: "Jmol" } });
  v.addUnitCell(m, { box: { color: "#333" }, alabel: "a", blabel: "b", clabel: "c" });
  fitCell(v, M, $("supercell").checked ? 2 : 1);
  v.render();
  const elements = [...new Set(s.sites.map((site) => site.element))];
  $("legend").replaceChildren(...elements.map((e) => el("span", { class: "item" },
    el("span", { class: "dot", style: `background:${colorOf(e)}` }), e)));
}

// Centre the view on the (super)cell, not on the atoms, and zoom so that all of it shows.
function fitCell(v, M, k) {
  v.zoomTo();
  const centre = [0, 1, 2].map((i) => (k / 2) * (M[0][i] + M[1][i] + M[2][i]));
  let radius = 0;
  for (const f of [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 1]]) {
    const p = [0, 1, 2].map((i) => k * (f[0] * M[0][i] + f[1] * M[1][i] + f[2] * M[2][i]));
    radius = Math.max(radius, Math.hypot(p[0] - centre[0], p[1] - centre[1], p[2] - centre[2]));
  }
  radius += 1.2; // room for the spheres on the corners
  const fov = (v.camera && v.camera.fov) || 20;
  const cameraZ = v.CAMERA_Z || 150;
  const z = -(radius / Math.tan((Math.PI / 180) * (fov / 2)) - cameraZ);
  const view = v.getView();
  v.setView([-centre[0], -centre[1], -centre[2], z, view[4], view[5], view[6], view[7]]);
}

$("supercell").addEventListener("change", drawStructure);
$("relaxed").addEventListener("change", loadStructure);

// ---- polling --------------------------------------------------------------------------------
let timer = null;
async function tick() {
  clearTimeout(timer);
  await refreshJobs();
  const job = state.jobs.find((j) => j.id === state.job);
  const busy = (j) => j && (["queued", "running"].includes(j.status) || (j.screen && ["queued", "running"].includes(j.screen.status)));
  if (state.job && (busy(job) || busy(state.detail) || !state.detail)) await refreshJob();
  clearTimeout(timer);
  timer = setTimeout(tick, state.jobs.some(busy) ? 500 : 3000);
}
function pollSoon() { clearTimeout(timer); timer = setTimeout(tick, 300); }

// ---- models: the form offers what the chosen model was trained with -------------------------
const models = new Map();
function applyModel() {
  const m = models.get($("f-model").value);
  if (!m) return;
  const has = (c) => m.conditions.includes(c);
  $("f-stability-row").hidden = !has("stability");
  $("f-band-gap-label").hidden = !has("band_gap");
  $("f-formula-label").hidden = !has("formula");
  const keep = $("f-sampler").value;
  $("f-sampler").replaceChildren(...m.samplers.map((s) => el("option", { value: s }, s.toUpperCase())));
  if (m.samplers.includes(keep)) $("f-sampler").value = keep;
  $("f-steps").max = m.timesteps;
  $("f-steps").placeholder = `default (≤ ${m.timesteps})`;
}
$("f-model").addEventListener("change", applyModel);

api("/api/info").then((info) => {
  $("model-info").textContent = `default model ${info.model} · runs in ${info.runs}`;
  $("f-n").max = info.max_n;
  for (const m of info.models || []) models.set(m.name, m);
  $("f-model").replaceChildren(...[...models.values()].map((m) =>
    el("option", { value: m.name, title: `${m.family} family; ${m.conditions.join(", ")}` }, `${m.name} (${m.family})`)));
  $("f-model").value = info.model;
  applyModel();
}).catch(() => {});
tick();
