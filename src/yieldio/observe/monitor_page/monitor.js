// The yieldio monitor's page: the scheduler's structures, pushed by the server (EventSource), as they change.
"use strict";

const token = new URLSearchParams(location.search).get("token");
const headers = token ? { Authorization: "Bearer " + token } : {};
const TRACE_ROWS = 100;
let state = null;
let clockOffset = 0; // the server's clock minus ours, in seconds
let selected = null; // the task whose stack is shown
let selectedSteps = null;

function withToken(path) {
  return token ? path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : path;
}

function $(id) {
  return document.getElementById(id);
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

function clock(seconds) {
  const date = new Date(seconds * 1000);
  return date.toTimeString().slice(0, 8) + "." + String(date.getMilliseconds()).padStart(3, "0");
}

function taskById(id) {
  return state.tasks.find((task) => task.id === id) || { id: id, name: "", peer: null };
}

function chip(id) {
  const task = taskById(id);
  const node = el("span", "chip" + (state.running === id ? " running" : ""));
  node.appendChild(el("span", "label", "#" + id + " " + task.name));
  node.dataset.id = id;
  if (task.peer) node.append(" ", el("span", "peer", task.peer)); // the space: where a narrow column breaks it
  node.addEventListener("click", () => select(id));
  return node;
}

function fill(container, rows, empty, more) {
  container.replaceChildren(...rows);
  if (!rows.length) container.appendChild(el(container.tagName === "OL" ? "li" : "tr", "empty", empty));
  if (more > 0) container.appendChild(el(container.tagName === "OL" ? "li" : "tr", "empty", "and " + more + " more"));
}

function row(cells) {
  const tr = el("tr");
  for (const cell of cells) {
    const td = el("td");
    if (cell instanceof Node) td.appendChild(cell);
    else td.textContent = cell;
    tr.appendChild(td);
  }
  return tr;
}

function stackItems(frames) {
  return frames.map((frame) => {
    const li = el("li");
    li.appendChild(el("span", "where", frame.file + ":" + frame.line + " in " + frame.function));
    if (frame.code) li.appendChild(el("code", null, frame.code));
    return li;
  });
}

function render(s) {
  state = s;
  clockOffset = s.time - Date.now() / 1000;
  const status = $("status");
  if (s.blocked) {
    status.textContent = "blocked";
    status.className = "status blocked";
  } else if (s.stepping) {
    status.textContent = "paused: step mode";
    status.className = "status paused";
  } else {
    status.textContent = "live";
    status.className = "status";
  }
  let about = s.program + " · pid " + s.pid;
  if (s.worker) about += " · worker " + s.worker;
  $("program").textContent = about;

  $("blocked").hidden = !s.blocked;
  if (s.blocked) {
    const b = s.blocked;
    $("blocked-text").textContent =
      "Task #" + b.id + " " + b.name + (b.peer ? " (" + b.peer + ")" : "") + " has held the scheduler for " +
      b.seconds.toFixed(1) + " s, since " + clock(b.since) + ".";
    $("blocked-stack").replaceChildren(...stackItems(b.stack));
  }

  $("read-only").hidden = !s.read_only;
  const held = s.read_only || s.blocked !== null; // a blocked scheduler takes no orders until it is free
  $("pause").disabled = held || s.stepping;
  $("step").disabled = held || !s.stepping;
  $("resume").disabled = held || !s.stepping;
  let next = "";
  if (s.stepping) {
    next = s.ready.length
      ? "next: #" + s.ready[0] + " " + taskById(s.ready[0]).name + ", the front of tasks"
      : "nothing is ready: the scheduler waits in poll()";
  }
  $("next").textContent = next;

  const counts = s.counts;
  const ready = s.ready.map((id) => {
    const li = el("li");
    li.appendChild(chip(id));
    return li;
  });
  if (s.running !== null) {
    const li = el("li");
    li.appendChild(el("span", "quiet", "running: "));
    li.appendChild(chip(s.running));
    ready.unshift(li);
  }
  fill($("ready"), ready, "empty: no task is ready, the scheduler waits in poll()", counts.ready - s.ready.length);
  fill($("recv-wait"), s.waiting.recv_wait.map((w) => row(["fd " + w.fd, chip(w.id)])), "empty",
    counts.recv_wait - s.waiting.recv_wait.length);
  fill($("send-wait"), s.waiting.send_wait.map((w) => row(["fd " + w.fd, chip(w.id)])), "empty",
    counts.send_wait - s.waiting.send_wait.length);
  fill($("sleeping"), s.sleeping.map((w) => {
    const left = el("span", "countdown mono");
    left.dataset.deadline = w.deadline;
    return row([clock(w.deadline), chip(w.id), left]);
  }), "empty", counts.sleeping - s.sleeping.length);
  const others = s.waiting.joined.map((w) => row(["joined on #" + w.target, chip(w.id)]))
    .concat(s.waiting.parked.map((id) => row(["parked", chip(id)])));
  fill($("other-waits"), others, "empty", counts.joined + counts.parked - others.length);
  tick();

  $("trace-busy").textContent = s.trace_busy
    ? "· busy, about " + s.trace_busy.toLocaleString() + " events a second: a burst of them is shown every second"
    : "";
  $("counts").textContent = counts.tasks + " tasks";
  const body = $("task-table").tBodies[0];
  body.replaceChildren(...s.tasks.map((task) => {
    const tr = row(["#" + task.id, task.name, task.state, task.peer || "",
      task.steps === null ? "" : String(task.steps), (task.run_time * 1000).toFixed(1) + " ms",
      task.age.toFixed(1) + " s"]);
    tr.children[2].className = "area-" + task.area;
    tr.dataset.id = task.id;
    if (task.id === selected) tr.classList.add("selected");
    tr.addEventListener("click", () => select(task.id));
    return tr;
  }));
  $("note").textContent = s.note || (s.consistent ? "read by the scheduler between two steps, at " + clock(s.time) : "");

  if (selected !== null) {
    const task = s.tasks.find((t) => t.id === selected);
    if (!task) {
      $("detail-state").textContent = "finished";
      $("cancel").disabled = true;
    } else if (task.steps !== selectedSteps) {
      select(selected);
    }
  }
}

function tick() {
  const now = Date.now() / 1000 + clockOffset;
  for (const node of document.querySelectorAll(".countdown")) {
    const left = Number(node.dataset.deadline) - now;
    node.textContent = left > 0 ? "in " + left.toFixed(1) + " s" : "due";
  }
}

function addEvents(events) {
  const body = $("trace");
  for (const event of events) {
    const tr = row([clock(event.time), "#" + event.id + " " + event.name, event.event, event.detail]);
    tr.className = "ev-" + event.event;
    tr.children[2].className = "event";
    body.insertBefore(tr, body.firstChild);
  }
  while (body.rows.length > TRACE_ROWS) body.deleteRow(body.rows.length - 1);
}

function showStep(step) {
  const report = $("step-report");
  report.textContent = "Step " + step.seq + ": " + step.text + ".";
  report.classList.remove("fresh");
  void report.offsetWidth; // restart the flash
  report.classList.add("fresh");
}

async function call(method, path) {
  const response = await fetch(withToken(path), { method: method, headers: headers });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

async function select(id) {
  selected = id;
  for (const tr of $("task-table").tBodies[0].rows) tr.classList.toggle("selected", Number(tr.dataset.id) === id);
  $("detail").hidden = false;
  try {
    const detail = await call("GET", "/api/task/" + id);
    if (selected !== id) return;
    const task = detail.task;
    selectedSteps = task.steps;
    $("detail-title").textContent = "Task #" + task.id + " " + task.name + (task.peer ? " " + task.peer : "");
    $("detail-state").textContent = task.state + (task.steps === null ? "" : ", " + task.steps + " steps so far");
    $("stack").replaceChildren(...stackItems(detail.stack));
    $("cancel").disabled = state !== null && state.read_only;
    $("cancel").hidden = state !== null && state.read_only;
  } catch (error) {
    $("detail-state").textContent = error.message;
    $("stack").replaceChildren();
    $("cancel").disabled = true;
  }
}

async function act(path, note) {
  try {
    const answer = await call("POST", path);
    if (note) $(note).textContent = answer.queued
      ? "The scheduler is busy: the cancel waits its turn."
      : "Cancelled: Cancelled is thrown into the task at the point where it waits, so its cleanup runs.";
    return answer;
  } catch (error) {
    $(note || "step-report").textContent = error.message;
    return null;
  }
}

$("pause").addEventListener("click", () => act("/api/pause"));
$("resume").addEventListener("click", () => act("/api/resume"));
$("step").addEventListener("click", async () => {
  $("step").disabled = true;
  const step = await act("/api/step");
  if (step) showStep(step);
  $("step").disabled = !(state && state.stepping);
});
$("cancel").addEventListener("click", () => {
  if (selected !== null) act("/api/task/" + selected + "/cancel", "detail-note");
});

// ?blocked_after=SECONDS in the page's address is the threshold of the blocked panel (0.5 s by default)
const threshold = new URLSearchParams(location.search).get("blocked_after");
const source = new EventSource(withToken("/api/events" + (threshold ? "?blocked_after=" + encodeURIComponent(threshold) : "")));
source.onmessage = (message) => {
  const data = JSON.parse(message.data);
  render(data.state);
  addEvents(data.events);
  if (data.step) showStep(data.step);
};
source.onerror = () => {
  const status = $("status");
  status.textContent = "connection lost: retrying";
  status.className = "status lost";
};
setInterval(tick, 100);
