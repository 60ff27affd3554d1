// Parses every LogQL query of the Loki panels in dashboards/*.json with Grafana's own LogQL
// grammar (@grafana/lezer-logql). Its parser never throws: a query is invalid when the syntax
// tree holds an error node. Run by scripts/check-logql.sh (which installs the package).
import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import { parser } from "@grafana/lezer-logql";

const dir = process.argv[2];
let checked = 0;
let bad = 0;
for (const file of readdirSync(dir).filter((f) => f.endsWith(".json")).sort()) {
  const dash = JSON.parse(readFileSync(join(dir, file), "utf8"));
  for (const panel of dash.panels ?? []) {
    if (panel.datasource?.type !== "loki") continue;
    for (const target of panel.targets ?? []) {
      // Grafana variables are interpolated before the query is parsed.
      const query = target.expr
        .replaceAll("$__auto", "1m")
        .replaceAll("$__interval", "1m")
        .replace(/\$[a-z_]+/g, ".*");
      const tree = parser.parse(query);
      const errors = [];
      tree.iterate({
        enter: (node) => {
          if (node.type.isError) errors.push(node.from);
        },
      });
      checked++;
      if (errors.length) {
        bad++;
        console.error(`${file}: panel ${panel.id} "${panel.title}": LogQL error at ${errors}: ${query}`);
      }
    }
  }
}
console.log(`LogQL: ${checked} queries parsed, ${bad} with errors`);
if (checked === 0 || bad > 0) process.exit(1);
