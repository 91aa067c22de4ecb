// A small markdown renderer for chat replies that cannot inject HTML.
//
// It builds DOM nodes and puts every piece of text in with textContent / text nodes: the
// text is never parsed as HTML, which is stronger than escaping it first ("<img onerror=...>"
// stays those characters). Links are made only for http(s) URLs. What it understands:
// paragraphs (single newlines kept), ``` fenced code blocks (an unclosed fence, as while a
// reply streams, runs to the end), `inline code`, **bold** / __bold__, *italic* / _italic_,
// "-", "*", "+" and "1." lists, "#" headings, "> " quotes, [text](https://...) and bare
// https:// links, and tables ("| a | b |" rows; a "|---|---|" row makes the rows above it
// the header).

const FENCE = /^\s*```\s*([\w+#.-]*)\s*$/;
const HEADING = /^(#{1,6})\s+(.*)$/;
const BULLET = /^\s*[-*+]\s+(.*)$/;
const NUMBERED = /^\s*(\d{1,9})[.)]\s+(.*)$/;
const QUOTE = /^\s*>\s?(.*)$/;
const TABLE_ROW = /^\s*\|(.*)\|\s*$/;
const TABLE_RULE = /^\s*\|(\s*:?-+:?\s*\|)+\s*$/;
const INLINE = [
  "(?<!`)(?=(`+))\\1([^`]|[^`][\\s\\S]*?[^`])\\1(?!`)", // 1, 2: code (a whole run of backticks, taken at once)
  "\\[([^[\\]\\n]+)\\]\\(([^()\\s]+)\\)", // 3, 4: [text](url), no bracket inside the text
  "\\*\\*(?=\\S)([\\s\\S]*?\\S)\\*\\*", // 5: **bold**
  "(?<!\\w)__(?=[^\\s_])([\\s\\S]*?[^\\s_])__(?!\\w)", // 6: __bold__
  "\\*(?=[^\\s*])([\\s\\S]*?[^\\s*])\\*", // 7: *italic*
  "(?<!\\w)_(?=[^\\s_])([\\s\\S]*?[^\\s_])_(?!\\w)", // 8: _italic_
  "(https?:\\/\\/[^\\s<>()\"]*[^\\s<>()\".,;:!?'])", // 9: a bare link
].join("|");

export function safeUrl(url) {
  return /^https?:\/\/[^\s]+$/i.test(url) ? url : null;
}

function element(tag, children = []) {
  const node = document.createElement(tag);
  node.append(...children);
  return node;
}

function link(children, url) {
  const a = element("a", children);
  a.href = url;
  a.target = "_blank";
  a.rel = "noopener noreferrer nofollow";
  return a;
}

// Text with inline markup -> a list of nodes.
export function inline(text) {
  const nodes = [];
  const pattern = new RegExp(INLINE, "g"); // its own position: inline() recurses
  let last = 0;
  for (let m; (m = pattern.exec(text)); ) {
    let node = null;
    if (m[2] !== undefined) {
      node = element("code", [m[2]]);
    } else if (m[3] !== undefined) {
      const url = safeUrl(m[4]);
      node = url ? link(inline(m[3]), url) : null; // not a web link: left as the characters it was
    } else if (m[5] !== undefined || m[6] !== undefined) {
      node = element("strong", inline(m[5] ?? m[6]));
    } else if (m[7] !== undefined || m[8] !== undefined) {
      node = element("em", inline(m[7] ?? m[8]));
    } else {
      node = link([m[9]], m[9]);
    }
    if (node === null) continue;
    if (m.index > last) nodes.push(document.createTextNode(text.slice(last, m.index)));
    nodes.push(node);
    last = m.index + m[0].length;
  }
  if (last < text.length) nodes.push(document.createTextNode(text.slice(last)));
  return nodes;
}

// Markdown text -> a DocumentFragment.
export function renderMarkdown(text) {
  const out = document.createDocumentFragment();
  const lines = String(text).replace(/\r\n?/g, "\n").split("\n");
  let paragraph = [];
  let list = null; // {node, ordered}
  const flushParagraph = () => {
    if (paragraph.length) out.append(element("p", inline(paragraph.join("\n"))));
    paragraph = [];
  };
  const endBlocks = () => {
    flushParagraph();
    list = null;
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    let m;
    if ((m = FENCE.exec(line))) {
      endBlocks();
      const code = [];
      for (i++; i < lines.length && !/^\s*```\s*$/.test(lines[i]); i++) code.push(lines[i]);
      const codeNode = element("code", [code.join("\n")]);
      if (m[1]) codeNode.className = `language-${m[1]}`;
      out.append(element("pre", [codeNode]));
    } else if (!line.trim()) {
      endBlocks();
    } else if ((m = HEADING.exec(line))) {
      endBlocks();
      out.append(element(`h${Math.min(m[1].length + 2, 6)}`, inline(m[2])));
    } else if ((m = BULLET.exec(line)) || (m = NUMBERED.exec(line))) {
      flushParagraph();
      const ordered = m.length === 3;
      if (!list || list.ordered !== ordered) {
        list = { node: element(ordered ? "ol" : "ul"), ordered };
        if (ordered && m[1] !== "1") list.node.start = Number(m[1]);
        out.append(list.node);
      }
      list.node.append(element("li", inline(ordered ? m[2] : m[1])));
    } else if (list && /^\s+\S/.test(line)) {
      list.node.lastChild.append(document.createTextNode("\n"), ...inline(line.trim()));
    } else if (TABLE_ROW.test(line)) {
      endBlocks();
      const rows = [];
      let header = 0;
      for (; i < lines.length && TABLE_ROW.test(lines[i]); i++) {
        if (TABLE_RULE.test(lines[i])) header = header || rows.length;
        else rows.push(TABLE_ROW.exec(lines[i])[1].split("|").map((cell) => cell.trim()));
      }
      i--;
      const table = element("table");
      rows.forEach((cells, r) => {
        const tag = r < header ? "th" : "td";
        table.append(element("tr", cells.map((cell) => element(tag, inline(cell)))));
      });
      out.append(table);
    } else if ((m = QUOTE.exec(line))) {
      endBlocks();
      const quoted = [m[1]];
      while (i + 1 < lines.length && (m = QUOTE.exec(lines[i + 1]))) {
        quoted.push(m[1]);
        i++;
      }
      out.append(element("blockquote", inline(quoted.join("\n"))));
    } else {
      list = null;
      paragraph.push(line);
    }
  }
  flushParagraph();
  return out;
}
