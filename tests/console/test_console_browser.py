"""The web console in a real browser (Debian's Chromium): sign in, the staging gate by two approvers,
the author refused, a block that halts a running rollout seen live, CSRF, and hostile text rendered inert.

The tests of this module share one lab site, one console and two browser sessions, in order: the
release proven on staging by the first is the one the later ones approve and supersede.
"""

from __future__ import annotations

import re
import threading

import pytest
import requests
from console_browser import PASSWORDS, WAIT, csp_violations, screenshot, sign_in, submit, text, wait_for
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from provisioner import pipeline
from provisioner.demo import bump_bios

HOSTILE_COMMENT = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script> looks fine'
HOSTILE_REASON = "boot loop after flash <script>window.pwned=3</script>"


@pytest.fixture(scope="module")
def r1(site):
    """Release R1, proven on staging (applied: every staging node active, soak running)."""
    rid = site.build()
    pipeline.promote(site.ctx, rid, "staging")
    assert pipeline.apply(site.ctx, "staging").status == "done"
    return rid


def fill(driver, field_id: str, value: str) -> None:
    el = driver.find_element(By.ID, field_id)
    el.clear()
    el.send_keys(value)


def pwned(driver):
    return driver.execute_script("return window.pwned === undefined ? null : window.pwned")


def test_a_stranger_is_sent_to_sign_in_and_a_wrong_password_is_refused(browsers, console):
    b = browsers("bob")
    b.get(console.url + "blocks")
    assert "/console/login" in b.current_url
    sign_in(b, console.url, "bob", "not-his-password")
    assert "wrong username or password for 'bob'" in text(b)
    sign_in(b, console.url, "BOB", PASSWORDS["bob"])  # one account, whatever the spelling
    wait_for(b, lambda d: "Dashboard" in d.title)
    assert "bob (approver)" in b.find_element(By.CSS_SELECTOR, ".who").text


def test_the_pages_carry_a_strict_content_security_policy_and_nothing_breaks_it(browsers, console, r1):
    r = requests.get(console.url + "login", verify=console.ca, timeout=WAIT)
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "style-src 'self'" in csp and "unsafe-inline" not in csp
    cookie = r.headers["Set-Cookie"]
    assert cookie.startswith("__Host-console=") and "Secure" in cookie and "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    b = browsers("bob")
    for page in ("", "releases", f"releases/{r1}", "rollouts/1", "blocks", "nodes", "nodes/s1n03", "audit"):
        b.get(console.url + page)
        assert b.find_element(By.TAG_NAME, "h1").text, page
        assert b.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1"), page
    assert csp_violations(b) == []


def test_a_post_without_the_csrf_token_is_refused_and_changes_nothing(browsers, console, site):
    b = browsers("bob")
    b.get(console.url + "blocks")
    # the real form, with its hidden token taken out: what a forged cross-site form would send
    b.execute_script("document.querySelector('#block-form input[name=csrf_token]').remove()")
    fill(b, "b-component", "bios")
    fill(b, "b-version", "1.13.2")
    fill(b, "b-reason", "forged")
    submit(b, b.find_element(By.CSS_SELECTOR, "#block-form button"))
    wait_for(b, lambda d: "403" in d.find_element(By.TAG_NAME, "h1").text)
    assert "no valid CSRF token" in text(b)
    assert site.ctx.store.active_blocks() == []


def test_the_event_stream_needs_a_session_and_resumes_after_the_last_event_id(console, site, r1):
    from provisioner.console.data import rollout_changes

    http = requests.Session()
    http.trust_env = False  # requests prefers a CA bundle from the environment over Session.verify
    http.verify = console.ca
    assert http.get(console.url + "rollouts/1/events", timeout=WAIT).status_code == 401
    token = re.search(r'name="csrf_token" value="([^"]+)"', http.get(console.url + "login", timeout=WAIT).text)[1]
    http.post(console.url + "login", data={"username": "vic", "password": PASSWORDS["vic"], "csrf_token": token},
              timeout=WAIT)
    seqs = [s["seq"] for s in rollout_changes(site.ctx, 1, 0)["steps"]]
    with http.get(console.url + "rollouts/1/events", headers={"Last-Event-ID": str(seqs[2])}, stream=True,
                  timeout=WAIT) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        lines = list(r.iter_lines(decode_unicode=True))  # rollout 1 is done: the stream ends by itself
    ids = [int(x[4:]) for x, kind in zip(lines, lines[1:], strict=False) if x.startswith("id: ") and kind == "event: step"]
    assert ids == seqs[3:]  # what came after the last event seen, each once, in order
    assert "event: end" in lines


def test_the_authors_approve_is_refused_and_the_refusal_is_audited(browsers, console, site, r1):
    a = browsers("second")
    sign_in(a, console.url, "alice", PASSWORDS["alice"])
    a.get(console.url + f"releases/{r1}")
    submit(a, a.find_element(By.ID, "approve"))
    wait_for(a, lambda d: d.find_elements(By.CSS_SELECTOR, ".flash-error"))
    refusal = a.find_element(By.CSS_SELECTOR, ".flash-error").text
    assert f"alice built release {r1[:12]} and cannot approve it" in refusal
    assert site.ctx.store.approvals(r1) == []
    b = browsers("bob")
    b.get(console.url + "audit")
    row = b.find_element(By.CSS_SELECTOR, "#audit tbody tr.refused")
    assert "authz.refused" in row.text and "alice" in row.text and "cannot approve" in row.text
    submit(a, a.find_element(By.CSS_SELECTOR, ".who button"))  # sign out: this browser is carol's next
    wait_for(a, lambda d: "/console/login" in d.current_url)


def test_two_approvers_in_two_browsers_approve_and_the_gate_turns_green(browsers, console, site, r1):
    bob, carol = browsers("bob"), browsers("second")
    sign_in(carol, console.url, "carol", PASSWORDS["carol"])
    for who, driver, comment in (("bob", bob, "staging clean, INC-free"), ("carol", carol, HOSTILE_COMMENT)):
        driver.get(console.url + f"releases/{r1}")
        assert "NOT YET" in driver.find_element(By.ID, "gate-verdict").text
        fill(driver, "comment", comment)
        submit(driver, driver.find_element(By.ID, "approve"))
        wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".flash-ok"))
        assert f"approved by {who}" in driver.find_element(By.CSS_SELECTOR, ".flash-ok").text

    def green(d):
        d.get(console.url + f"releases/{r1}")
        return "PASSES" in d.find_element(By.ID, "gate-verdict").text

    wait_for(bob, green)  # the soak (1 s here) may still be running
    approvals = bob.find_element(By.ID, "approvals").text
    assert "bob" in approvals and "carol" in approvals
    assert HOSTILE_COMMENT in approvals  # shown as text: an <img> or <script> never reaches the page
    assert not bob.find_elements(By.CSS_SELECTOR, "#approvals img, #approvals script")
    assert pwned(bob) is None
    assert pipeline.gate(site.ctx, r1).ok
    screenshot(bob, "console-release-gate")


def test_a_block_from_the_console_halts_a_running_rollout_and_its_page_shows_it_live(
        browsers, console, site, r1, tmp_path_factory):
    pipeline.promote(site.ctx, r1, "production", force_gate=False)
    spec2 = tmp_path_factory.mktemp("spec") / "v2"
    bump_bios(site.spec, spec2)  # R2 raises dl360g10 BIOS to 2.90.0
    r2 = site.build(spec2)
    ctx2 = site.context(spec2)
    pipeline.promote(ctx2, r2, "staging")
    started, go, seen = threading.Event(), threading.Event(), {}

    def hold_the_canary_until_on_call_has_acted(e):
        if e["event"] == "created":
            seen["rollout"] = e["rollout"]
        if e["event"] == "node_step" and e["step"] == "prepare" and not started.is_set():
            started.set()
            go.wait(WAIT * 2)

    run = threading.Thread(target=lambda: seen.update(result=pipeline.apply(
        ctx2, "staging", progress=hold_the_canary_until_on_call_has_acted)), daemon=True)
    run.start()
    assert started.wait(WAIT)
    bob, dana = browsers("bob"), browsers("second")
    bob.get(console.url + f"rollouts/{seen['rollout']}")
    assert "RUNNING" in bob.find_element(By.ID, "status").text
    wait_for(bob, lambda d: "connected" in d.find_element(By.ID, "live").text)
    bob.execute_script("window.sameLoad = true")  # gone if the page were reloaded

    submit(dana, dana.find_element(By.CSS_SELECTOR, ".who button"))
    sign_in(dana, console.url, "dana", PASSWORDS["dana"])  # on call: an operator
    dana.get(console.url + "blocks")
    fill(dana, "b-component", "bios")
    fill(dana, "b-version", "2.90.0")
    fill(dana, "b-reason", HOSTILE_REASON)
    fill(dana, "b-incident", "INC-4412")
    submit(dana, dana.find_element(By.CSS_SELECTOR, "#block-form button"))
    wait_for(dana, lambda d: d.find_elements(By.CSS_SELECTOR, ".flash-ok"))
    assert "blocked bios 2.90.0" in dana.find_element(By.CSS_SELECTOR, ".flash-ok").text
    go.set()

    wait_for(bob, lambda d: "HALTED" in d.find_element(By.ID, "status").text)
    assert bob.execute_script("return window.sameLoad") is True
    assert "blocked since the rollout started" in bob.find_element(By.ID, "reason").text
    assert not bob.find_element(By.ID, "decide").get_attribute("hidden")  # resume / abort offered
    run.join(WAIT)
    assert seen["result"].status == "halted"
    assert not [e for n in ("s1n03", "s1n04") for e in site.firmware_changes(n) if e["version"] == "2.90.0"]
    screenshot(bob, "console-rollout-halted")

    dana.get(console.url + "blocks")
    assert HOSTILE_REASON in dana.find_element(By.ID, "blocks").text and pwned(dana) is None
    screenshot(dana, "console-blocks")
    bob.get(console.url)
    assert HOSTILE_REASON in text(bob) and pwned(bob) is None
    assert "HALTED" not in text(bob) and "halted" in text(bob)  # the dashboard says it in words
    screenshot(bob, "console-dashboard")


def test_unblocking_takes_a_second_approver(browsers, console, site):
    dana, bob = browsers("second"), browsers("bob")
    dana.get(console.url + "blocks")
    fill(dana, "ur-1", "fixed image from the vendor, INC-4412")
    submit(dana, dana.find_element(By.CSS_SELECTOR, "#blocks form button"))
    wait_for(dana, lambda d: d.find_elements(By.CSS_SELECTOR, ".flash-ok"))
    assert "another approver must confirm it" in text(dana)
    submit(dana, dana.find_element(By.CSS_SELECTOR, "#blocks form button"))  # dana confirming her own request
    wait_for(dana, lambda d: d.find_elements(By.CSS_SELECTOR, ".flash-error"))
    assert "may not confirm an unblock" in text(dana)
    assert len(site.ctx.store.active_blocks()) == 1
    bob.get(console.url + "blocks")
    assert "requested by dana" in text(bob)
    submit(bob, bob.find_element(By.CSS_SELECTOR, "#blocks form button"))
    wait_for(bob, lambda d: d.find_elements(By.CSS_SELECTOR, ".flash-ok"))
    assert "unblocked bios 2.90.0" in text(bob)
    assert site.ctx.store.active_blocks() == []


def test_on_a_phone_the_rollout_page_fits_and_the_keyboard_reaches_everything(browsers, console):
    b = browsers("bob")
    b.get(console.url + "rollouts/2")
    screenshot(b, "console-phone-rollout", 390, 844)
    assert b.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
    b.get(console.url + "audit")
    b.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    assert b.switch_to.active_element.text == "Skip to content"
    b.switch_to.active_element.send_keys(Keys.TAB)
    assert b.switch_to.active_element.text == "provisioner"
    screenshot(b, "console-audit")
    assert "INTACT" in b.find_element(By.ID, "verify-h").text


def test_single_sign_on_lands_on_the_dashboard_and_a_viewer_is_offered_no_action(browsers, console, oidc_provider):
    b = browsers("second")
    submit(b, b.find_element(By.CSS_SELECTOR, ".who button"))
    wait_for(b, lambda d: "/console/login" in d.current_url)
    oidc_provider.user = {"sub": "00u-vic", "preferred_username": "Vic"}  # who is at the provider's page
    submit(b, b.find_element(By.LINK_TEXT, "Sign in with single sign-on"))
    wait_for(b, lambda d: "Dashboard" in d.title)
    assert "vic (viewer)" in b.find_element(By.CSS_SELECTOR, ".who").text
    b.get(console.url + "blocks")
    assert not b.find_elements(By.ID, "block-form")
    b.get(console.url + "audit")
    assert "account.oidc" in text(b) and "oidc" in b.find_element(By.CSS_SELECTOR, "#audit tbody tr").text


def test_resuming_the_halted_rollout_from_its_page_runs_it_to_the_end_live(browsers, console, site):
    bob = browsers("bob")
    bob.set_window_size(1280, 800)
    bob.get(console.url + "rollouts/2")  # halted by the block, which is lifted now
    assert "HALTED" in bob.find_element(By.ID, "status").text
    fill(bob, "resume-reason", "vendor fixed the image, INC-4412 closed")
    submit(bob, bob.find_element(By.CSS_SELECTOR, "#decide form button"))
    assert "rollout 2 resumed" in bob.find_element(By.CSS_SELECTOR, ".flash-ok").text
    wait_for(bob, lambda d: "DONE" in d.find_element(By.ID, "status").text)  # followed live, no reload
    assert bob.find_element(By.ID, "decide").get_attribute("hidden")
    assert {fw["bios"] for n, fw in site.firmware().items() if n in ("s1n03", "s1n04")} == {"2.90.0"}
    audit = [e for e in site.ctx.store.audit_entries() if e["action"] == "rollout.resume"]
    assert audit[-1]["actor"] == "bob" and audit[-1]["auth_method"] == "password"
