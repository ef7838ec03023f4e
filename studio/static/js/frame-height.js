// Size a same-origin frame (the playground at /play/) to its content: opening "Settings for every column"
// then grows the page instead of clipping it inside a fixed-height frame with a scroll of its own. The site
// and the frame share an origin, so the parent reads the frame's document and watches it with a
// ResizeObserver; without JavaScript the frame keeps the height its page gives it.
(function () {
  const MIN_HEIGHT = 480;
  const SHRINK_AFTER_MS = 300;

  function blocksOf(doc) {
    // Gradio's <main class="contain">: the page's blocks, each as tall as its content.
    return doc.querySelector(".gradio-container main.contain");
  }

  function contentHeight(doc) {
    // Gradio stretches everything from <html> down to that main (flex-grow) to fill the frame, so the
    // document is never shorter than the frame: its scrollHeight alone could only grow. The content ends where
    // the main's last block ends; what lies below (the main's padding, Gradio's footer) does not stretch.
    // The <html> box, not scrollHeight: an open dropdown's list overflows the page, and growing the frame for
    // it would move the list (Gradio places it by the space left below), which would resize the frame again.
    const main = blocksOf(doc);
    if (!main || !main.children.length) return doc.documentElement.scrollHeight;
    const page = doc.documentElement.getBoundingClientRect().height;
    const end = Math.max(...Array.from(main.children, (block) => block.getBoundingClientRect().bottom));
    const slack = main.getBoundingClientRect().bottom - parseFloat(getComputedStyle(main).paddingBottom) - end;
    return Math.ceil(page - Math.max(0, slack));
  }

  function watch(frame) {
    const doc = frame.contentDocument;
    if (!doc || !doc.body) return;
    const wanted = () => Math.max(MIN_HEIGHT, contentHeight(doc) + frame.offsetHeight - frame.clientHeight);
    let shrinking = null;
    const fit = () => {
      const height = wanted();
      if (height >= frame.offsetHeight) {
        clearTimeout(shrinking);
        shrinking = null;
        if (frame.style.height !== `${height}px`) frame.style.height = `${height}px`;
      } else if (shrinking === null) {
        // Grow at once, shrink only when the content stays smaller: Gradio collapses blocks for a frame while
        // it redraws them (opening a dropdown does), and following that would make the page jump.
        shrinking = setTimeout(() => {
          shrinking = null;
          frame.style.height = `${Math.min(frame.offsetHeight, wanted())}px`;
        }, SHRINK_AFTER_MS);
      }
    };
    const resizes = new ResizeObserver(fit);
    resizes.observe(doc.documentElement);
    // Gradio draws after the load event and redraws blocks: watch each block of its main once it exists.
    const observeBlocks = () => Array.from(blocksOf(doc)?.children ?? []).forEach((block) => resizes.observe(block));
    const redraws = new MutationObserver(observeBlocks);
    redraws.observe(doc.body, { childList: true, subtree: true });
    (frame.fitObservers || []).forEach((old) => old.disconnect());
    frame.fitObservers = [resizes, redraws];
    observeBlocks();
    fit();
  }

  document.querySelectorAll("iframe[data-fit-content]").forEach((frame) => {
    frame.addEventListener("load", () => watch(frame));
    if (frame.contentDocument && frame.contentDocument.readyState === "complete") watch(frame);
  });
})();
