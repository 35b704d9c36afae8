// Loads the status page in Debian's Chromium (never a downloaded browser) and reports what it shows.
//
//   node tests/browser/cockpit.mjs ADMIN_URL SCREENSHOT.png EXPECTED_TOP_TENANT
//
// Waits (up to 30 s) until EXPECTED_TOP_TENANT is the first row of the tenants table, clicks it, waits
// for its costliest shapes, saves a full-page screenshot, and prints one JSON line: the tenants' order,
// the first shape's cells, requests the page made to any other origin, console errors, page errors.
// Exits 0 whenever it could report; the pytest side asserts.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [admin, screenshot, expected] = process.argv.slice(2);
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const profile = mkdtempSync(join(tmpdir(), "sluicegate-chromium-"));
const report = { order: [], shape: null, foreign: [], console: [], errors: [], dialogs: 0, stage: "launch" };

const context = await chromium.launchPersistentContext(profile, {
  executablePath: CHROMIUM,
  headless: true,
  viewport: { width: 1440, height: 1000 },
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  const page = context.pages()[0] || await context.newPage();
  const origin = new URL(admin).origin;
  page.on("request", (request) => {
    const url = request.url();
    if (!url.startsWith(origin) && !url.startsWith("data:")) report.foreign.push(url);
  });
  page.on("console", (message) => { if (message.type() === "error") report.console.push(message.text()); });
  page.on("pageerror", (error) => report.errors.push(String(error)));
  page.on("dialog", async (dialog) => { report.dialogs++; await dialog.dismiss(); });

  report.stage = "load";
  await page.goto(admin + "/", { waitUntil: "load" });
  report.title = await page.title();
  report.stage = "top tenant";
  await page.waitForFunction(
    (name) => document.querySelector("#tenants tbody tr")?.dataset.tenant === name, expected, { timeout: 30000 });
  report.order = await page.$$eval("#tenants tbody tr", (rows) => rows.map((row) => row.dataset.tenant));
  report.stage = "shapes";
  await page.click("#tenants tbody tr:first-child");
  await page.waitForSelector("#shapes tbody tr[data-fingerprint]", { timeout: 15000 });
  report.shape = await page.$eval("#shapes tbody tr[data-fingerprint]", (row) => ({
    fingerprint: row.dataset.fingerprint,
    cells: [...row.cells].map((cell) => cell.textContent),
  }));
  report.shapes_heading = await page.textContent("#shapes-section h2");
  report.markup_in_examples = await page.$$eval("#shapes td.example *", (nodes) => nodes.length);
  report.stage = "charts";
  await page.waitForSelector("#chart-observed path.line", { timeout: 15000 });
  report.chart_lines = await page.$$eval(".charts path.line", (paths) => paths.length);
  report.throttle_chips = await page.$$eval(`#tenants tbody tr[data-tenant="${expected}"] .chip`,
    (chips) => chips.map((chip) => chip.textContent));
  report.live = await page.textContent("#live");
  report.footer = await page.textContent("#footer");
  await page.screenshot({ path: screenshot, fullPage: true });
  report.stage = "done";
} catch (error) {
  report.failure = String(error);
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
console.log(JSON.stringify(report));
