// Render the maths of every page with the KaTeX copy served from this site (see hooks/offline_math.py).
// Markdown pages: pymdownx.arithmatex (generic mode) wraps maths in .arithmatex as \( \) or \[ \].
// Notebook pages: the cells keep Jupyter's $ and $$ delimiters.
function jlstmRenderMath(root) {
  renderMathInElement(root, {
    delimiters: [
      { left: "$$", right: "$$", display: true },
      { left: "\\[", right: "\\]", display: true },
      { left: "\\(", right: "\\)", display: false },
      { left: "$", right: "$", display: false },
    ],
    ignoredClasses: ["highlight", "highlighttable", "doc-signature"],
    throwOnError: false,
  });
}

if (typeof document$ !== "undefined") {
  document$.subscribe(({ body }) => jlstmRenderMath(body));   // mkdocs-material, instant navigation too
} else {
  document.addEventListener("DOMContentLoaded", () => jlstmRenderMath(document.body));
}
