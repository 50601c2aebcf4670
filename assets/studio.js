// Image Studio: Ctrl+Enter (Cmd+Enter on a Mac) in the prompt boxes starts a generation,
// since plain Enter adds a new line in a multi-line prompt. On a phone, Generate scrolls the
// results into view above the fixed action bar (assets/studio.css), so the newest image, the
// status line and Generate are on screen together.
() => {
  const PHONE = "(max-width: 640px)";
  document.addEventListener("click", (event) => {
    if (!window.matchMedia(PHONE).matches) return;
    if (!(event.target.closest && event.target.closest("#generate-button"))) return;
    const results = document.querySelector("#results");
    if (results) results.scrollIntoView({ behavior: "smooth", block: "start" });
  });
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
