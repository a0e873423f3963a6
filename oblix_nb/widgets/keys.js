// Shared by the widgets' front ends: oblix_nb/widgets/{chat,browser}.py put this module's text in front of
// chat.js / browser.js when they load them (no build step, no imports; the same pattern as common.css).

// ---------------------------------------------------------------- keys stay in the widget
// Notebook hosts (JupyterLab, Notebook 7, marimo) bind single keys in command mode: a/b insert cells, m/r/y
// change the cell's type, x/c/v cut/copy/paste, d d deletes, arrows/PageUp/Home move the active cell,
// Shift+Enter runs it. None of them may see a key pressed with focus in a widget. Two layers:
// - keydown, keypress and keyup stop at the widget's root (bubbling phase, after the widget's own handlers):
//   enough where the host listens in the bubbling phase (JupyterLab, marimo);
// - Notebook 7 matches its shortcuts on document in the *capture* phase, before the widget sees the key.
//   Lumino skips an element marked data-lm-suppress-shortcuts, but only if the mark is on the element it
//   would match first, i.e. the focused element itself (a mark on the root is too late: the focused button
//   already matches ".jp-Notebook.jp-mod-commandMode :focus"). So a window capture listener (it runs before
//   document's) marks the key's target inside the widget, for every key but the two that pass on purpose:
//   Escape (leaves the widget: focus goes back to the notebook, in command mode) and Ctrl/Cmd+S (saves).
const PASS_KEYS = (event) => event.key === "Escape" ||
  ((event.ctrlKey || event.metaKey) && !event.altKey && !event.shiftKey && (event.key === "s" || event.key === "S"));

function activeIn(root) {
  const doc = root.getRootNode ? root.getRootNode() : document; // a shadow root in marimo
  return (doc && doc.activeElement) || document.activeElement;
}

function leaveWidget(root) {
  const active = activeIn(root);
  const cell = root.closest(".jp-Cell");
  if (cell && typeof cell.focus === "function") {
    if (!cell.hasAttribute("tabindex")) cell.setAttribute("tabindex", "-1");
    cell.focus({ preventScroll: true });
  } else if (active && typeof active.blur === "function") {
    active.blur();
  }
}

function isolateKeys(root, onKeydown) {
  root.addEventListener("keydown", (event) => {
    if (onKeydown && !event.defaultPrevented) onKeydown(event);
    if (event.key === "Escape" && !event.isComposing) leaveWidget(root);
    if (!PASS_KEYS(event)) event.stopPropagation();
  });
  for (const type of ["keypress", "keyup"]) {
    root.addEventListener(type, (event) => { if (!PASS_KEYS(event)) event.stopPropagation(); });
  }
  const mark = (event) => {
    const target = event.target;
    if (!(target instanceof Element) || !root.contains(target)) return;
    if (PASS_KEYS(event)) target.removeAttribute("data-lm-suppress-shortcuts");
    else target.setAttribute("data-lm-suppress-shortcuts", "true");
  };
  window.addEventListener("keydown", mark, true);
  return () => window.removeEventListener("keydown", mark, true);
}
