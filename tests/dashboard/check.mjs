// Drives the operator dashboard in headless Chromium for
// tests/api/dashboard.rs: opens URL, prints "loaded" once the page has
// drawn a first state, waits for a line on stdin (the test has shared a
// strategy and an insight over gRPC), then waits up to 2 s for both to
// show — the strategy in the leaderboard, the insight by its title —
// prints how long each took, and saves a screenshot to SHOT.
//
//   node check.mjs URL STRATEGY INSIGHT_TITLE SHOT
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";

const [url, strategy, title, shot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu"],
});
let status = 0;
try {
  const page = await browser.newPage({ viewport: { width: 1440, height: 1100 } });
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  await page.goto(url);
  // Drawn once: the header shows the log position.
  await page.waitForFunction(() => document.getElementById("position").textContent !== "–", null, { timeout: 10000 });
  console.log("loaded");
  const lines = createInterface({ input: process.stdin });
  for await (const _ of lines) break;
  const started = Date.now();
  const seen = async (selector, what) => {
    await page.locator(selector).first().waitFor({ timeout: 2000 });
    console.log(`${what} shown after ${Date.now() - started} ms`);
  };
  await Promise.all([
    seen(`#leaderboards tr[data-strategy="${strategy}"]`, "strategy"),
    seen(`#insights li:has-text("${title}")`, "insight"),
    seen(`#storage:has-text("sled")`, "storage"),
  ]);
  if (errors.length) {
    console.log(`page errors: ${errors.join("; ")}`);
    status = 1;
  }
  await page.screenshot({ path: shot, fullPage: true });
  console.log(`screenshot ${shot}`);
} catch (e) {
  console.log(`failed: ${e.message}`);
  status = 1;
} finally {
  await browser.close();
}
process.exit(status);
