// Image Studio: Ctrl+Enter (Cmd+Enter on a Mac) in the prompt boxes starts a generation,
// since plain Enter adds a new line in a multi-line prompt.
() => {
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" || !(event.ctrlKey || event.metaKey)) return;
    const box = event.target.closest && event.target.closest("#prompt, #negative-prompt");
    if (!box) return;
    const button = document.querySelector("#generate-button");
    if (button && !button.disabled) {
      event.preventDefault();
      button.click();
    }
  });
}
