"""The page's inline CSS and its one small script (no external stylesheets or fonts)."""

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; margin: 1.5em 2em;
  color: #222; background: #fff; }
h1 { font-size: 1.6em; margin: 0 0 .2em; } h2 { font-size: 1.25em; margin: 1.4em 0 .4em; }
h3 { font-size: 1.05em; margin: .6em 0 .3em; }
code, pre { font: 12px/1.4 ui-monospace, 'SFMono-Regular', Menlo, Consolas, monospace; }
.headline { font-size: 1.2em; font-weight: 600; margin: .3em 0; }
.headline.ok { color: #1a7f37; } .headline.bad { color: #c62828; }
.cards { display: flex; gap: .6em; flex-wrap: wrap; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: .4em .9em; min-width: 6em; }
.card .n { display: block; font-size: 1.6em; font-weight: 700; }
.card.held .n { color: #1a7f37; } .card.failed .n, .card.drifted .n { color: #c62828; }
.card.inconclusive .n { color: #b26a00; } .card.unmeasurable .n { color: #6b6b8a; }
.card.error .n { color: #7b1fa2; } .badge.error { background: #7b1fa2; }
table { border-collapse: collapse; } td, th { border: 1px solid #ddd; padding: .25em .5em;
  vertical-align: middle; text-align: left; }
table.claims { font-size: 13px; width: 100%; } table.claims code { overflow-wrap: anywhere; }
code.nodeid { color: #666; font-size: 11px; } .scroll { overflow-x: auto; }
table.claims thead th { background: #f4f4f4; cursor: pointer; position: sticky; top: 0; }
tr.grouphead th { background: #fafafa; font-weight: 600; }
td.num { font-variant-numeric: tabular-nums; white-space: nowrap; } .ci { color: #666; }
td.drifted { background: #fdecea; } .drift { color: #c62828; }
.badge { display: inline-block; border-radius: 4px; padding: 0 .45em; color: #fff;
  font-size: .8em; font-weight: 600; margin-left: .2em; vertical-align: middle; }
.badge.held { background: #1a7f37; } .badge.failed { background: #c62828; }
.badge.inconclusive { background: #b26a00; } .badge.unmeasurable { background: #6b6b8a; }
section.group { border-top: 2px solid #eee; margin-top: 1.5em; }
.multiples { display: flex; flex-wrap: wrap; gap: 1.5em; }
.member { flex: 1 1 420px; max-width: 100%; }
pre.story { white-space: pre-wrap; padding: .5em .7em; border-left: 4px solid #1a7f37;
  background: #f6fbf6; margin: .4em 0; } pre.story.problem { border-color: #c62828;
  background: #fdf3f2; } p.story.problem { color: #c62828; }
dl { display: grid; grid-template-columns: max-content auto; gap: .1em .8em; margin: .4em 0; }
dt { color: #666; } dd { margin: 0; }
.figs { display: flex; flex-wrap: wrap; gap: .8em; align-items: flex-start; }
figure { margin: 0; } svg.forest.mini { display: block; }
footer { margin-top: 2.5em; color: #555; } table.meta th { font-weight: 600; background: #fafafa; }
"""

#: Sorts the claims table by a clicked column (row groups move together). Written without
#: '<' and '&' so the page stays well-formed XML.
JS = """//<![CDATA[
document.querySelectorAll("table.claims thead th").forEach(function (th, col) {
  th.addEventListener("click", function () {
    var table = th.closest("table"), dir = th.dataset.dir === "asc" ? -1 : 1;
    th.dataset.dir = dir === 1 ? "asc" : "desc";
    function key(tb) {
      var c = tb.querySelector("tr.claim").children[col];
      if (c.dataset.v === undefined) return c.textContent.trim().toLowerCase();
      return parseFloat(c.dataset.v);
    }
    Array.from(table.tBodies).sort(function (a, b) {
      var x = key(a), y = key(b);
      return (x === y ? 0 : (x > y ? 1 : -1)) * dir;
    }).forEach(function (tb) { table.appendChild(tb); });
  });
});
//]]>"""
