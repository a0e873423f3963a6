// The chat panel's front end (an anywidget ES module: no build step, no imports).
//
// State comes from the model's traits (sessions, session, messages, earlier, running, status, status_error,
// draft); a streaming reply arrives as custom messages {kind: "delta", key, text} appended to the live
// bubble as plain text. Message HTML is made inert by the kernel (oblix_nb/widgets/html.py); everything this
// module adds is built with DOM calls and textContent.

const STICK_PX = 32; // "at the bottom" tolerance of the transcript's scroll position

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== false && v !== null && v !== undefined) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c) node.append(c);
  return node;
}

let counter = 0;

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch (_e) {
    const area = h("textarea", { class: "oblix-offscreen", "aria-hidden": "true", tabindex: "-1" });
    area.value = text;
    document.body.append(area);
    area.select();
    let ok = false;
    try { ok = document.execCommand("copy"); } catch (_e2) { ok = false; }
    area.remove();
    return ok;
  }
}

// Keys stay in the widget: PASS_KEYS, activeIn, leaveWidget, isolateKeys come from keys.js (prepended).

// A printable key (no Ctrl/Alt/Meta, not Space or Enter, which activate controls).
const isTyping = (event) => event.key && event.key.length === 1 && event.key !== " " &&
  !event.ctrlKey && !event.metaKey && !event.altKey && !event.isComposing;
const TEXT_FIELD = "textarea, input:not([type=checkbox]):not([type=radio]):not([type=button]), [contenteditable]";

// "Insert as a new cell below" in JupyterLab / Notebook 7: the widget manager knows the notebook's document
// context; the cell is the one whose output holds this widget. Returns false where that is not available.
function notebookOf(model, el) {
  try {
    const manager = model.widget_manager;
    const context = manager && (manager._context || manager.context);
    const notebook = context && context.model && context.model.sharedModel;
    const cell = el.closest(".jp-Cell");
    if (!notebook || !cell || typeof notebook.insertCell !== "function") return null;
    return { notebook, cell };
  } catch (_e) {
    return null;
  }
}

// Whether "Insert cell" can work here: in the notebook directly, or through the kernel's set_next_input
// (trait can_insert_cell: an IPython kernel). Not in marimo or other hosts: the button is not shown there.
function canInsertCell(model, el) {
  return !!notebookOf(model, el) || !!model.get("can_insert_cell");
}

function insertCellBelow(model, el, code) {
  try {
    const found = notebookOf(model, el);
    if (!found) return false;
    const { notebook, cell } = found;
    let index = Number.parseInt(cell.getAttribute("data-windowed-list-index"), 10);
    if (Number.isNaN(index)) {
      index = Array.from(cell.parentElement.querySelectorAll(":scope > .jp-Cell")).indexOf(cell);
    }
    if (index < 0) return false;
    notebook.insertCell(index + 1, { cell_type: "code", source: code, metadata: {} });
    return true;
  } catch (_e) {
    return false;
  }
}

function render({ model, el }) {
  const id = `oblix-chat-${++counter}`;
  let disconnected = "";
  let stick = true;
  let draftTimer = null;

  // ---------------------------------------------------------------- DOM
  const picker = h("select", { id: `${id}-picker`, class: "oblix-select" });
  const newButton = h("button", { type: "button", class: "oblix-button", text: "New session" });
  const header = h("div", { class: "oblix-chat-head" },
    h("label", { for: `${id}-picker`, class: "oblix-label", text: "Session" }), picker, newButton);

  const earlierButton = h("button", { type: "button", class: "oblix-button oblix-earlier" });
  const list = h("div", { class: "oblix-transcript", role: "log", "aria-label": "Conversation",
    "aria-live": "off" });
  const scroller = h("div", { class: "oblix-scroll", tabindex: "0", "aria-label": "Conversation transcript",
    role: "region" }, earlierButton, list);
  const jump = h("button", { type: "button", class: "oblix-button oblix-jump", hidden: true,
    text: "↓ Jump to latest" });
  const view = h("div", { class: "oblix-view" }, scroller, jump);

  const input = h("textarea", { id: `${id}-input`, class: "oblix-input", rows: "3",
    placeholder: "Message — Enter sends, Shift+Enter for a new line" });
  const send = h("button", { type: "button", class: "oblix-button oblix-primary oblix-send", text: "Send",
    "aria-keyshortcuts": "Enter" });
  const stop = h("button", { type: "button", class: "oblix-button oblix-stop", text: "Stop" });
  const inputRow = h("div", { class: "oblix-input-row" },
    h("label", { for: `${id}-input`, class: "oblix-offscreen", text: "Message to the model" }),
    input, h("div", { class: "oblix-input-buttons" }, send, stop));
  const reason = h("div", { id: `${id}-reason`, class: "oblix-disconnected", role: "alert", hidden: true });
  const status = h("div", { class: "oblix-status", role: "status", "aria-live": "polite" });
  const announcer = h("div", { class: "oblix-offscreen", "aria-live": "polite", "aria-atomic": "true" });
  // tex2jax_ignore / mathjax_ignore: the host's MathJax never typesets "$" amounts in here as maths
  const root = h("div", { class: "oblix-widget oblix-chat tex2jax_ignore mathjax_ignore", role: "group",
    "aria-label": "Oblix chat" }, header, view, reason, inputRow, status, announcer);
  el.append(root);

  // ---------------------------------------------------------------- keys and focus
  // Typing with focus on a control of the panel (a button, the picker, the transcript) goes to the text box.
  const unisolate = isolateKeys(root, (event) => {
    if (!isTyping(event) || input.disabled || event.target === input) return;
    if (event.target.closest && event.target.closest(TEXT_FIELD)) return;
    event.preventDefault();
    input.focus();
    const end = input.value.length;
    input.setRangeText(event.key, end, end, "end");
    input.dispatchEvent(new Event("input", { bubbles: true }));
  });
  // A control that becomes disabled or hidden while focused (Send once sent, Stop once stopped, the jump
  // button once at the bottom) hands focus to the text box rather than dropping it on <body>.
  let lastFocused = null;
  root.addEventListener("focusin", (event) => { lastFocused = event.target; });
  function keepFocus() {
    const node = lastFocused;
    if (!node || !root.contains(node)) return;
    const active = activeIn(root);
    const gone = node.disabled || node.hidden || node.closest("[hidden]") || !node.isConnected;
    const lost = !active || active === document.body || active === node;
    if (!gone || !lost) return;
    const next = [input, stop, send, scroller].find((c) => !c.disabled && !c.hidden);
    if (next) next.focus({ preventScroll: true });
  }
  root.addEventListener("focusout", (event) => {
    if (!event.relatedTarget) requestAnimationFrame(keepFocus);
    else if (!root.contains(event.relatedTarget)) lastFocused = null; // the user moved on: leave focus alone
  });

  // ---------------------------------------------------------------- scrolling
  const atBottom = () => scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight <= STICK_PX;
  function settle() {
    if (stick) {
      scroller.scrollTop = scroller.scrollHeight;
      jump.hidden = true;
    } else {
      jump.hidden = atBottom();
    }
  }
  scroller.addEventListener("scroll", () => {
    stick = atBottom();
    jump.hidden = stick;
  });
  jump.addEventListener("click", () => {
    stick = true;
    settle();
    input.focus();
  });
  const resize = typeof ResizeObserver === "function" ? new ResizeObserver(() => settle()) : null;
  if (resize) resize.observe(list);

  // ---------------------------------------------------------------- code blocks
  function enhanceCode(node) {
    for (const pre of node.querySelectorAll(".oblix-bubble pre")) {
      if (pre.parentElement.classList.contains("oblix-code")) continue;
      const code = pre.textContent.replace(/\n$/, "");
      const lang = (pre.querySelector("code") || pre).className.match(/language-([\w+#.-]+)/);
      const copy = h("button", { type: "button", class: "oblix-button oblix-small", text: "Copy",
        "aria-label": "Copy code" });
      const insert = h("button", { type: "button", class: "oblix-button oblix-small oblix-insert",
        text: "Insert cell", "aria-label": "Insert code as a new cell below", hidden: !canInsertCell(model, el) });
      copy.addEventListener("click", async () => {
        const ok = await copyText(code);
        copy.textContent = ok ? "Copied" : "Copy failed";
        setTimeout(() => { copy.textContent = "Copy"; }, 1500);
      });
      insert.addEventListener("click", () => {
        if (insertCellBelow(model, el, code)) {
          status.textContent = "inserted the code as a new cell below";
        } else {
          model.send({ kind: "insert_cell", code });
        }
      });
      const bar = h("div", { class: "oblix-code-bar" },
        h("span", { class: "oblix-code-lang", text: lang ? lang[1] : "code" }), copy, insert);
      const box = h("div", { class: "oblix-code" });
      pre.replaceWith(box);
      box.append(bar, pre);
      pre.setAttribute("tabindex", "0");
      pre.setAttribute("aria-label", `${lang ? lang[1] + " " : ""}code`);
    }
  }

  // ---------------------------------------------------------------- transcript
  function build(message) {
    const row = h("div", { class: "oblix-row" });
    row.dataset.key = message.key;
    row.innerHTML = message.html; // inert: made by the kernel from escaped text / safe Markdown
    row._html = message.html;
    enhanceCode(row);
    return row;
  }

  function renderMessages() {
    const messages = model.get("messages") || [];
    const existing = new Map();
    for (const node of Array.from(list.children)) existing.set(node.dataset.key, node);
    messages.forEach((message, i) => {
      let node = existing.get(message.key);
      if (!node || node._html !== message.html) {
        const fresh = build(message);
        if (node) {
          const oldText = node.querySelector(".oblix-live-text");
          const newText = fresh.querySelector(".oblix-live-text");
          if (oldText && newText && !newText.textContent) newText.textContent = oldText.textContent;
          node.replaceWith(fresh);
        }
        node = fresh;
      }
      existing.delete(message.key);
      if (list.children[i] !== node) list.insertBefore(node, list.children[i] || null);
    });
    for (const node of existing.values()) node.remove();
    const earlier = model.get("earlier") || 0;
    earlierButton.hidden = earlier <= 0;
    earlierButton.textContent = `Show earlier messages (${earlier} more)`;
    settle();
  }

  // ---------------------------------------------------------------- picker
  function renderPicker() {
    const current = model.get("session") || "";
    const entries = [{ id: "", label: "+ new session" }].concat(model.get("sessions") || []);
    const same = picker.options.length === entries.length &&
      entries.every((e, i) => picker.options[i].value === e.id && picker.options[i].textContent === e.label);
    if (!same) {
      picker.textContent = "";
      for (const entry of entries) {
        const option = document.createElement("option");
        option.value = entry.id;
        option.textContent = entry.label; // titles are text, never HTML
        picker.append(option);
      }
    }
    picker.value = current;
  }

  // ---------------------------------------------------------------- controls
  function renderControls() {
    const running = !!model.get("running");
    send.disabled = running || !!disconnected;
    stop.disabled = !running || !!disconnected;
    input.disabled = !!disconnected;
    picker.disabled = !!disconnected;
    newButton.disabled = !!disconnected;
    earlierButton.disabled = !!disconnected;
    reason.hidden = !disconnected;
    reason.textContent = disconnected;
    root.classList.toggle("oblix-is-disconnected", !!disconnected);
    if (disconnected) input.setAttribute("aria-describedby", `${id}-reason`);
    else input.removeAttribute("aria-describedby");
    keepFocus();
  }

  function renderStatus() {
    status.textContent = model.get("status") || "";
    status.classList.toggle("oblix-error-text", !!model.get("status_error"));
  }

  function renderDraft() {
    const draft = model.get("draft") || "";
    if (input.value === draft) return;
    const typing = document.activeElement === input && input.value !== "";
    if (!typing) input.value = draft; // set from Python, or a refused send given back
  }

  function submit() {
    const text = input.value;
    if (disconnected || model.get("running") || !text.trim()) return;
    stick = true;
    input.dataset.sent = text;
    input.value = "";
    clearTimeout(draftTimer);
    model.send({ kind: "send", text });
  }

  input.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" || event.isComposing || event.keyCode === 229) return;
    event.stopPropagation(); // the notebook's own Enter / Shift+Enter shortcuts do not apply in here
    event.preventDefault();
    if (event.shiftKey || event.altKey) {
      // a newline, inserted here: hosts may swallow Shift+Enter's default action (it runs cells)
      input.setRangeText("\n", input.selectionStart, input.selectionEnd, "end");
      input.dispatchEvent(new Event("input", { bubbles: true }));
      return;
    }
    submit();
  });
  input.addEventListener("input", () => {
    clearTimeout(draftTimer);
    draftTimer = setTimeout(() => {
      model.set("draft", input.value);
      model.save_changes();
    }, 300);
  });
  send.addEventListener("click", submit);
  stop.addEventListener("click", () => model.send({ kind: "stop" }));
  newButton.addEventListener("click", () => { stick = true; model.send({ kind: "new" }); });
  picker.addEventListener("change", () => { stick = true; model.send({ kind: "select", id: picker.value }); });
  earlierButton.addEventListener("click", () => { stick = false; model.send({ kind: "earlier" }); });

  // ---------------------------------------------------------------- messages from the kernel
  function onCustom(msg) {
    if (!msg || typeof msg !== "object") return;
    if (msg.kind === "delta" || msg.kind === "live") {
      const row = Array.from(list.children).find((n) => n.dataset.key === msg.key);
      const text = row && row.querySelector(".oblix-live-text");
      if (!text) return;
      if (msg.kind === "delta") text.textContent += msg.text;
      else text.textContent = msg.text;
      settle();
    } else if (msg.kind === "announce") {
      announcer.textContent = "";
      setTimeout(() => { announcer.textContent = msg.text; }, 50);
    }
  }

  // ---------------------------------------------------------------- the kernel going away
  // ipywidgets marks every model "not live" when its kernel restarts or dies (comm_live_update); a closed
  // comm ends the model. Either way nothing typed here could reach Python any more: say so, disable input.
  function onCommLive() {
    const live = this && this.model ? this.model.comm_live : false;
    setDisconnected(live === false ? "The kernel restarted or stopped: this panel is disconnected. "
      + "Run its cell again for a live panel." : "");
  }
  function onCommClose() {
    setDisconnected("This panel was closed by the kernel. Run its cell again for a live panel.");
  }
  function setDisconnected(text) {
    disconnected = text;
    renderControls();
  }

  model.on("change:messages", renderMessages);
  model.on("change:earlier", renderMessages);
  model.on("change:sessions", renderPicker);
  model.on("change:session", () => { stick = true; renderPicker(); });
  model.on("change:running", renderControls);
  model.on("change:status", renderStatus);
  model.on("change:status_error", renderStatus);
  model.on("change:draft", renderDraft);
  model.on("change:can_insert_cell", () => {
    for (const b of root.querySelectorAll(".oblix-insert")) b.hidden = !canInsertCell(model, el);
  });
  model.on("msg:custom", onCustom);
  model.on("comm_live_update", onCommLive);
  model.on("comm:close", onCommClose);

  renderPicker();
  renderMessages();
  renderControls();
  renderStatus();
  renderDraft();
  model.send({ kind: "hello" });
  requestAnimationFrame(settle);

  return () => {
    unisolate();
    if (resize) resize.disconnect();
    clearTimeout(draftTimer);
  };
}

export default { render };
