// Copy buttons: <button class="copy" data-copy="#element-id">; the only script of our own (no inline JS: CSP).
document.addEventListener("click", async (event) => {
  const button = event.target.closest("button.copy");
  if (!button) return;
  const source = document.querySelector(button.dataset.copy);
  const text = source ? (source.value ?? source.textContent).trim() : "";
  try {
    await navigator.clipboard.writeText(text);
  } catch (err) {  // plain http on another host: no Clipboard API; select the text instead
    const range = document.createRange();
    range.selectNodeContents(source);
    const selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    document.execCommand("copy");
  }
  const label = button.textContent;
  button.textContent = "copied";
  setTimeout(() => { button.textContent = label; }, 1200);
});
