// The session browser's front end (an anywidget ES module: no build step, no imports).
//
// A data grid over the page of sessions in the `grid` trait: sortable, resizable columns (drag a header's
// right edge), horizontal scrolling at narrow widths, multi-select (click, Ctrl/Cmd-click, Shift-click,
// checkboxes). Filters, paging and actions are custom messages to Python; every value shown from a session
// (titles, metadata, model ids) is set as text. The transcript pane's HTML is made inert by the kernel.

const DEFAULT_WIDTHS = { select: 44, title: 300, updated: 170, messages: 92, models: 200, cost: 90, metadata: 240 };
const MIN_WIDTH = 48;
// Below the defaults, columns shrink (text wraps) down to these before the grid scrolls sideways: at the
// default notebook width every column, Metadata included, is in view.
const FIT_MIN = { select: 44, title: 150, updated: 96, messages: 88, models: 110, cost: 64, metadata: 130 };

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (v !== false && v !== null && v !== undefined) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c) node.append(c);
  return node;
}

// Keys stay in the widget: PASS_KEYS, activeIn, leaveWidget, isolateKeys come from keys.js (prepended).

let counter = 0;

function render({ model, el }) {
  const id = `oblix-browser-${++counter}`;
  const widths = { ...DEFAULT_WIDTHS };
  let anchor = null; // the row a Shift-click extends from
  let childView = null;
  let disconnected = false;

  // ---------------------------------------------------------------- filters
  function field(key, label, placeholder) {
    const input = h("input", { id: `${id}-${key}`, type: "text", class: "oblix-text", placeholder,
      autocomplete: "off", spellcheck: "false" });
    const box = h("div", { class: "oblix-field" },
      h("label", { for: `${id}-${key}`, class: "oblix-label", text: label }), input);
    return [box, input];
  }
  const [titleBox, titleInput] = field("title", "Title", "contains…");
  const [metaBox, metaInput] = field("meta", "Metadata", "k=v  n=3  flag=true");
  const [textBox, textInput] = field("text", "Full text", "words in titles or messages");
  const apply = h("button", { type: "button", class: "oblix-button oblix-primary", text: "Apply filters" });
  const clear = h("button", { type: "button", class: "oblix-button", text: "Clear" });
  const filters = h("div", { class: "oblix-filters", role: "search", "aria-label": "Filter sessions" },
    titleBox, metaBox, textBox, h("div", { class: "oblix-filter-buttons" }, apply, clear));

  // ---------------------------------------------------------------- grid
  const colgroup = h("colgroup");
  const headRow = h("tr");
  const body = h("tbody");
  const table = h("table", { class: "oblix-grid", "aria-label": "Sessions", "aria-describedby": `${id}-pageinfo` },
    colgroup, h("thead", {}, headRow), body);
  const gridWrap = h("div", { class: "oblix-grid-wrap", tabindex: "0", role: "region",
    "aria-label": "Sessions table (scrolls)" }, table);
  const empty = h("p", { class: "oblix-hint", hidden: true, text: "No sessions match." });

  // ---------------------------------------------------------------- paging
  const first = h("button", { type: "button", class: "oblix-button", text: "« First", "aria-label": "First page" });
  const prev = h("button", { type: "button", class: "oblix-button", text: "‹ Previous", "aria-label": "Previous page" });
  const next = h("button", { type: "button", class: "oblix-button", text: "Next ›", "aria-label": "Next page" });
  const last = h("button", { type: "button", class: "oblix-button", text: "Last »", "aria-label": "Last page" });
  const pageInput = h("input", { id: `${id}-page`, type: "number", min: "1", class: "oblix-text oblix-page-input" });
  const pageInfo = h("span", { id: `${id}-pageinfo`, class: "oblix-page-info" });
  const refresh = h("button", { type: "button", class: "oblix-button", text: "Refresh" });
  const pager = h("nav", { class: "oblix-pager", "aria-label": "Pages" }, first, prev,
    h("label", { for: `${id}-page`, class: "oblix-label", text: "Page" }), pageInput, pageInfo, next, last, refresh);

  // ---------------------------------------------------------------- actions
  const open = h("button", { type: "button", class: "oblix-button", text: "Open in chat" });
  const copy = h("button", { type: "button", class: "oblix-button", text: "Copy" });
  const merge = h("button", { type: "button", class: "oblix-button", text: "Merge" });
  const del = h("button", { type: "button", class: "oblix-button oblix-danger", text: "Delete" });
  const exportPath = h("input", { id: `${id}-export`, type: "text", class: "oblix-text",
    placeholder: "file.json, or a folder/ for several", autocomplete: "off", spellcheck: "false" });
  const exportButton = h("button", { type: "button", class: "oblix-button", text: "Export" });
  const actions = h("div", { class: "oblix-actions", role: "toolbar", "aria-label": "Actions on the selection" },
    open, copy, merge, del,
    h("span", { class: "oblix-export" },
      h("label", { for: `${id}-export`, class: "oblix-label", text: "Export to" }), exportPath, exportButton));
  const confirmText = h("span", { class: "oblix-confirm-text" });
  const confirmYes = h("button", { type: "button", class: "oblix-button oblix-danger" });
  const confirmNo = h("button", { type: "button", class: "oblix-button", text: "Cancel" });
  const confirmBox = h("div", { class: "oblix-confirm", role: "group", "aria-label": "Confirm delete", hidden: true },
    confirmText, confirmYes, confirmNo);
  const status = h("div", { class: "oblix-status", role: "status", "aria-live": "polite" });
  const detail = h("div", { class: "oblix-detail", tabindex: "0", role: "region",
    "aria-label": "Transcript of the selected session" });
  const chatSlot = h("div", { class: "oblix-chat-slot" });
  // tex2jax_ignore / mathjax_ignore: the host's MathJax never typesets "$" amounts in here as maths
  const root = h("div", { class: "oblix-widget oblix-browser tex2jax_ignore mathjax_ignore", role: "group",
    "aria-label": "Oblix sessions" }, filters, gridWrap, empty, pager, actions, confirmBox, status, detail, chatSlot);
  el.append(root);
  // no key reaches the notebook's shortcuts from in here (an inline chat panel isolates its own keys too)
  const unisolate = isolateKeys(root);

  // A control that becomes disabled or hidden while focused (Prev on the first page, Delete once the
  // selection is gone, the confirmation once answered) hands focus to its neighbour, else to the grid.
  let lastFocused = null;
  root.addEventListener("focusin", (event) => { lastFocused = event.target; });
  function keepFocus() {
    const node = lastFocused;
    if (!node || (node.isConnected && !root.contains(node))) return;
    const active = activeIn(root);
    const gone = node.disabled || node.hidden || (node.closest && node.closest("[hidden]")) || !node.isConnected;
    const lost = !active || active === document.body || active === node;
    if (!gone || !lost) return;
    const usable = (c) => c && !c.disabled && !c.hidden && !c.closest("[hidden]") && c.isConnected;
    const group = node.isConnected ? node.closest(".oblix-pager, .oblix-actions, .oblix-confirm, .oblix-filters") : null;
    let next = group ? [...group.querySelectorAll("button, input")].find(usable) : null;
    if (group === confirmBox && usable(del)) next = del; // the confirmation answered: back to Delete
    if (!next && !node.isConnected && node.dataset && node.dataset.rowId) { // a row's checkbox, rebuilt
      next = [...body.querySelectorAll("input[type=checkbox]")].find((b) => b.dataset.rowId === node.dataset.rowId);
    }
    (next || gridWrap).focus({ preventScroll: true });
  }
  root.addEventListener("focusout", (event) => {
    if (!event.relatedTarget) requestAnimationFrame(keepFocus);
    else if (!root.contains(event.relatedTarget)) lastFocused = null;
  });

  // ---------------------------------------------------------------- rendering
  function selectedSet() { return new Set(model.get("selected") || []); }

  function setSelected(ids) {
    model.set("selected", ids);
    model.save_changes();
    renderSelection();
  }

  function renderColumns() {
    const columns = model.get("columns") || [];
    const sort = model.get("sort");
    const descending = model.get("descending");
    colgroup.textContent = "";
    headRow.textContent = "";
    colgroup.append(h("col", { "data-key": "select" }));
    const all = h("input", { type: "checkbox", "aria-label": "Select all sessions on this page" });
    all.addEventListener("change", () => {
      setSelected(all.checked ? (model.get("grid") || []).map((r) => r.id) : []);
    });
    headRow.append(h("th", { scope: "col", class: "oblix-select-col" }, all));
    for (const column of columns) {
      colgroup.append(h("col", { "data-key": column.key }));
      const th = h("th", { scope: "col", "data-key": column.key });
      if (column.sortable) {
        const active = sort === column.key;
        th.setAttribute("aria-sort", active ? (descending ? "descending" : "ascending") : "none");
        const button = h("button", { type: "button", class: "oblix-sort",
          text: column.label + (active ? (descending ? " ▼" : " ▲") : "") });
        button.setAttribute("aria-label", `Sort by ${column.label}`);
        button.addEventListener("click", () => model.send({ kind: "sort", column: column.key }));
        th.append(button);
      } else {
        th.append(h("span", { class: "oblix-th-text", text: column.label }));
      }
      const grip = h("span", { class: "oblix-resize", "aria-hidden": "true", title: "Drag to resize" });
      grip.addEventListener("pointerdown", (event) => startResize(event, column.key));
      th.append(grip);
      headRow.append(th);
    }
    applyWidths();
    fitColumns();
  }

  function applyWidths() {
    let total = 0;
    for (const col of colgroup.children) {
      const w = widths[col.dataset.key] || 160;
      col.style.width = `${w}px`;
      total += w;
    }
    table.style.width = `${total}px`;
  }

  // Default widths, scaled down to the grid's box (not below FIT_MIN) until the user resizes a column.
  let userSized = false;
  function fitColumns() {
    if (userSized) return;
    const keys = [...colgroup.children].map((c) => c.dataset.key);
    const available = gridWrap.clientWidth - 2;
    if (!keys.length || available <= 0) return;
    const base = Object.fromEntries(keys.map((k) => [k, DEFAULT_WIDTHS[k] || 160]));
    const floor = Object.fromEntries(keys.map((k) => [k, Math.min(base[k], FIT_MIN[k] || MIN_WIDTH)]));
    let fixed = new Set(keys.filter((k) => k === "select"));
    let fit = { ...base };
    for (let round = 0; round < keys.length; round++) {
      const used = [...fixed].reduce((a, k) => a + floor[k], 0);
      const free = keys.filter((k) => !fixed.has(k));
      const want = free.reduce((a, k) => a + base[k], 0);
      const factor = Math.min(1, Math.max(0, available - used) / want);
      let clamped = false;
      for (const k of free) {
        fit[k] = Math.floor(base[k] * factor);
        if (fit[k] < floor[k]) { fit[k] = floor[k]; fixed.add(k); clamped = true; }
      }
      for (const k of fixed) fit[k] = floor[k];
      if (!clamped) break;
    }
    Object.assign(widths, fit);
    applyWidths();
  }
  const gridResize = typeof ResizeObserver === "function" ? new ResizeObserver(() => fitColumns()) : null;
  if (gridResize) gridResize.observe(gridWrap);

  function startResize(event, key) {
    event.preventDefault();
    userSized = true;
    const startX = event.clientX;
    const startW = widths[key] || 160;
    const move = (e) => {
      widths[key] = Math.max(MIN_WIDTH, startW + e.clientX - startX);
      applyWidths();
    };
    const up = () => {
      window.removeEventListener("pointermove", move);
      window.removeEventListener("pointerup", up);
    };
    window.addEventListener("pointermove", move);
    window.addEventListener("pointerup", up);
  }

  function renderRows() {
    const columns = model.get("columns") || [];
    const rows = model.get("grid") || [];
    body.textContent = "";
    rows.forEach((row, index) => {
      const tr = h("tr", { "data-id": row.id });
      const box = h("input", { type: "checkbox", "aria-label": `Select “${row.title}”`, "data-row-id": row.id });
      box.addEventListener("change", () => {
        const ids = selectedSet();
        if (box.checked) ids.add(row.id); else ids.delete(row.id);
        anchor = index;
        setSelected(rows.map((r) => r.id).filter((x) => ids.has(x)));
      });
      tr.append(h("td", { class: "oblix-select-col" }, box));
      for (const column of columns) {
        const value = row[column.key];
        const td = h("td", { "data-key": column.key, text: value === undefined || value === null ? "" : String(value) });
        // equal titles: the tooltip tells them apart by id
        td.title = column.key === "title" ? `${td.textContent} (#${String(row.id).slice(0, 8)})` : td.textContent;
        tr.append(td);
      }
      tr.addEventListener("click", (event) => {
        if (event.target.closest("input")) return;
        const ids = selectedSet();
        if (event.shiftKey && anchor !== null) {
          const [a, b] = [Math.min(anchor, index), Math.max(anchor, index)];
          const range = rows.slice(a, b + 1).map((r) => r.id);
          setSelected(event.ctrlKey || event.metaKey
            ? rows.map((r) => r.id).filter((x) => ids.has(x) || range.includes(x)) : range);
        } else if (event.ctrlKey || event.metaKey) {
          if (ids.has(row.id)) ids.delete(row.id); else ids.add(row.id);
          anchor = index;
          setSelected(rows.map((r) => r.id).filter((x) => ids.has(x)));
        } else {
          anchor = index;
          setSelected([row.id]);
        }
      });
      tr.addEventListener("dblclick", () => { setSelected([row.id]); model.send({ kind: "open" }); });
      body.append(tr);
    });
    empty.hidden = rows.length > 0;
    renderSelection();
    fitColumns();
  }

  function renderSelection() {
    const ids = selectedSet();
    const rows = model.get("grid") || [];
    for (const tr of body.children) {
      const on = ids.has(tr.dataset.id);
      tr.classList.toggle("oblix-selected", on);
      const box = tr.querySelector("input[type=checkbox]");
      if (box) box.checked = on;
    }
    const all = headRow.querySelector("input[type=checkbox]");
    if (all) {
      all.checked = rows.length > 0 && rows.every((r) => ids.has(r.id));
      all.indeterminate = !all.checked && rows.some((r) => ids.has(r.id));
    }
    const n = ids.size;
    for (const b of [open, copy, del, exportButton]) b.disabled = disconnected || n < 1;
    merge.disabled = disconnected || n < 2;
    keepFocus();
  }

  function renderPager() {
    const page = model.get("page") || 0;
    const pages = model.get("pages") || 1;
    const total = model.get("total") || 0;
    first.disabled = prev.disabled = disconnected || page <= 0;
    next.disabled = last.disabled = disconnected || page >= pages - 1;
    pageInput.max = String(pages);
    if (document.activeElement !== pageInput) pageInput.value = String(page + 1);
    pageInfo.textContent = `of ${pages} · ${total} ${model.get("filtered") ? "matching " : ""}session${total === 1 ? "" : "s"}`;
    keepFocus();
  }

  function renderFilters() {
    for (const [input, key] of [[titleInput, "title_filter"], [metaInput, "meta_filter"], [textInput, "text_filter"]]) {
      if (document.activeElement !== input) input.value = model.get(key) || "";
    }
    if (document.activeElement !== exportPath) exportPath.value = model.get("export_path") || "";
  }

  function renderConfirm() {
    const ids = model.get("confirm") || [];
    confirmBox.hidden = ids.length === 0;
    confirmText.textContent = `Delete ${ids.length} session${ids.length === 1 ? "" : "s"}? This cannot be undone.`;
    confirmYes.textContent = `Delete ${ids.length}`;
    if (ids.length) confirmNo.focus();
    else keepFocus();
  }

  function renderStatus() {
    status.textContent = model.get("status") || "";
    status.classList.toggle("oblix-error-text", !!model.get("status_error"));
  }

  function renderDetail() {
    detail.innerHTML = model.get("detail_html") || ""; // inert: made by the kernel from escaped text / safe Markdown
  }

  async function renderChat() {
    const ref = model.get("chat_panel");
    if (childView) { childView.remove(); childView = null; }
    chatSlot.textContent = "";
    if (!model.get("chat_inline") || typeof ref !== "string" || !model.widget_manager) return;
    try {
      const child = await model.widget_manager.get_model(ref.replace(/^IPY_MODEL_/, ""));
      const view = await model.widget_manager.create_view(child, {});
      childView = view;
      chatSlot.append(view.el);
    } catch (error) {
      chatSlot.append(h("p", { class: "oblix-hint", text: "The chat panel cannot be shown here: display browser.chat_panel in a cell." }));
    }
  }

  // ---------------------------------------------------------------- events
  function sendFilters() {
    model.send({ kind: "filters", title: titleInput.value, metadata: metaInput.value, text: textInput.value });
  }
  for (const input of [titleInput, metaInput, textInput]) {
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") { event.preventDefault(); event.stopPropagation(); sendFilters(); }
    });
  }
  apply.addEventListener("click", sendFilters);
  clear.addEventListener("click", () => {
    titleInput.value = metaInput.value = textInput.value = "";
    model.send({ kind: "clear" });
  });
  first.addEventListener("click", () => model.send({ kind: "page", page: 0 }));
  prev.addEventListener("click", () => model.send({ kind: "page", page: (model.get("page") || 0) - 1 }));
  next.addEventListener("click", () => model.send({ kind: "page", page: (model.get("page") || 0) + 1 }));
  last.addEventListener("click", () => model.send({ kind: "page", page: (model.get("pages") || 1) - 1 }));
  pageInput.addEventListener("keydown", (event) => {
    if (event.key !== "Enter") return;
    event.preventDefault();
    event.stopPropagation();
    const n = Number.parseInt(pageInput.value, 10);
    if (!Number.isNaN(n)) model.send({ kind: "page", page: n - 1 });
  });
  refresh.addEventListener("click", () => model.send({ kind: "refresh" }));
  open.addEventListener("click", () => model.send({ kind: "open" }));
  copy.addEventListener("click", () => model.send({ kind: "copy" }));
  merge.addEventListener("click", () => model.send({ kind: "merge" }));
  del.addEventListener("click", () => model.send({ kind: "delete" }));
  confirmYes.addEventListener("click", () => model.send({ kind: "confirm_delete" }));
  confirmNo.addEventListener("click", () => model.send({ kind: "cancel_delete" }));
  exportPath.addEventListener("change", () => { model.set("export_path", exportPath.value); model.save_changes(); });
  exportPath.addEventListener("keydown", (event) => {
    if (event.key === "Enter") { event.preventDefault(); event.stopPropagation(); model.send({ kind: "export", path: exportPath.value }); }
  });
  exportButton.addEventListener("click", () => model.send({ kind: "export", path: exportPath.value }));

  function onCommLive() {
    disconnected = !(this && this.model && this.model.comm_live);
    root.classList.toggle("oblix-is-disconnected", disconnected);
    for (const node of root.querySelectorAll(".oblix-filters input, .oblix-filters button, .oblix-pager input, .oblix-pager button, .oblix-actions input, .oblix-grid input, .oblix-grid button")) {
      node.disabled = disconnected;
    }
    if (disconnected) {
      status.textContent = "The kernel restarted or stopped: this browser is disconnected. Run its cell again.";
      status.classList.add("oblix-error-text");
    }
    renderPager();
    renderSelection();
  }

  model.on("change:columns", () => { renderColumns(); renderRows(); });
  model.on("change:sort", renderColumns);
  model.on("change:descending", renderColumns);
  model.on("change:grid", renderRows);
  model.on("change:selected", renderSelection);
  for (const key of ["page", "pages", "total", "filtered"]) model.on(`change:${key}`, renderPager);
  for (const key of ["title_filter", "meta_filter", "text_filter", "export_path"]) model.on(`change:${key}`, renderFilters);
  model.on("change:confirm", renderConfirm);
  model.on("change:status", renderStatus);
  model.on("change:status_error", renderStatus);
  model.on("change:detail_html", renderDetail);
  model.on("change:chat_panel", renderChat);
  model.on("change:chat_inline", renderChat);
  model.on("comm_live_update", onCommLive);

  renderColumns();
  renderRows();
  renderPager();
  renderFilters();
  renderConfirm();
  renderStatus();
  renderDetail();
  renderChat();

  return () => {
    unisolate();
    if (childView) childView.remove();
    if (gridResize) gridResize.disconnect();
  };
}

export default { render };
