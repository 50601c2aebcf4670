// Image Studio: Ctrl+Enter (Cmd+Enter on a Mac) in the prompt boxes starts a generation,
// since plain Enter adds a new line in a multi-line prompt. On a phone, Generate scrolls the
// results into view above the fixed action bar (assets/studio.css), so the newest image, the
// status line and Generate are on screen together.
() => {
  const PHONE = "(max-width: 640px)";
  document.addEventListener("click", (event) => {
    if (!window.matchMedia(PHONE).matches) return;
    if (!(event.target.closest && event.target.closest("#generate-button"))) return;
    scrollToResults("smooth");
    scrollWhenDone(statusText());
  });
  // The live preview hides when a job ends and the results move up with it: scroll once more when done.
  // Polled, not observed: Gradio may replace the status element on each update.
  let watching = null;
  function scrollWhenDone(before) {
    clearInterval(watching);
    const until = Date.now() + 30 * 60 * 1000;
    watching = setInterval(() => {
      const text = statusText();
      if (text !== before && text.startsWith("Done")) {
        clearInterval(watching);
        requestAnimationFrame(() => scrollToResults("auto"));
      } else if (Date.now() > until) {
        clearInterval(watching);
      }
    }, 150);
  }
  function statusText() {
    const status = document.querySelector("#job-status");
    return status ? status.innerText : "";
  }
  function scrollToResults(behavior) {
    const results = document.querySelector("#results");
    if (results) results.scrollIntoView({ behavior, block: "start" });
  }
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

  // Gradio's "Use via API" page probes gradio_api/mcp/schema for an MCP server, which the studio does
  // not run (its Gradio API, REST API and gradio_client are the ways in). Answer that probe here, as the
  // server would, so the browser does not log a failed request for it on every visit.
  const fetchFromServer = window.fetch.bind(window);
  window.fetch = (resource, options) => {
    const url = typeof resource === "string" ? resource : String((resource && resource.url) || resource);
    if (url.split("?")[0].endsWith("/gradio_api/mcp/schema")) {
      return Promise.resolve(new Response("This server has no MCP endpoint.", { status: 404 }));
    }
    return fetchFromServer(resource, options);
  };
}
