// Loads Tripline's admin dashboard in headless Chromium and checks what a user would see:
// node check.mjs <admin URL> <cluster> <endpoint with an open breaker> <screenshot path>
// Exit 0 when the page shows that endpoint's breaker open (and the cluster's figures);
// otherwise prints what it saw and exits 1. Run by crates/tripline/tests/e2e/dashboard.rs.
import { chromium } from "playwright-core";

const [url, cluster, endpoint, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 700 } });
  const errors = [];
  page.on("pageerror", e => errors.push(String(e)));
  await page.goto(url);
  const section = page.locator(`section[data-cluster="${cluster}"]`);
  const row = section.locator(`tr[data-endpoint="${endpoint}"]`);
  // The breaker shows as open within a few updates (every 2 s).
  await row.locator('[data-breaker-state="open"]').waitFor({ timeout: 15000 });
  // A second update gives rates: the cluster's success rate is a percentage.
  await page.waitForFunction(c => {
    const s = document.querySelector(`section[data-cluster="${c}"] .figures b`);
    return s && /%$/.test(s.textContent);
  }, cluster, { timeout: 10000 });
  if (errors.length) throw new Error("script errors on the page: " + errors.join("; "));
  await page.locator("details").first().evaluate(d => (d.open = true));
  await page.screenshot({ path: screenshot, fullPage: true });
  // On a phone: the page reflows, nothing scrolls sideways but the tables.
  await page.setViewportSize({ width: 390, height: 800 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (overflow > 1) throw new Error(`the page is ${overflow}px wider than a phone's screen`);
  console.log("ok");
} catch (e) {
  console.error(String(e));
  console.error((await browser.contexts()[0]?.pages()[0]?.content())?.slice(0, 4000) ?? "");
  process.exitCode = 1;
} finally {
  await browser.close();
}
