"""Browser test of /dashboard: Debian's headless Chromium, driven by Selenium.

Started by .ci/dashboard-browser.sh. Starts `python run.py` on free loopback ports, opens
/dashboard on the admin port, makes landing-page visits, waits until the page and its chart
show them, checks the console is clean, and saves a screenshot (path printed).
"""
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SCREENSHOT = os.path.join('artifacts', 'dashboard.png')
VISITS = 7
WAIT = 20  # seconds for any one step


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def get(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status


def start_server(log):
    port, admin = free_port(), free_port()
    while admin == port:  # two bind-to-0 calls can return the same port
        admin = free_port()
    env = dict(os.environ, HOST='127.0.0.1', PORT=str(port), ADMIN_PORT=str(admin))
    proc = subprocess.Popen([sys.executable, 'run.py'], cwd=ROOT, env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            if get(f'http://127.0.0.1:{admin}/healthcheck') == 200:
                return proc, port, admin
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit('server did not start; see artifacts/dashboard-server.log')


def browser(profile):
    options = webdriver.ChromeOptions()
    options.binary_location = '/usr/bin/chromium'  # Debian's, never a downloaded browser
    for arg in ('--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
                '--disable-background-networking', '--disable-component-update',
                f'--user-data-dir={profile}', '--window-size=1000,800'):
        options.add_argument(arg)
    options.set_capability('goog:loggingPrefs', {'browser': 'ALL'})  # console messages
    return webdriver.Chrome(options=options, service=Service('/usr/bin/chromedriver'))


def main():
    os.makedirs(os.path.join(ROOT, 'artifacts'), exist_ok=True)
    results = []

    def check(name, ok, detail=''):
        results.append(ok)
        print(f'{"ok  " if ok else "FAIL"} {name}{": " + str(detail) if detail and not ok else ""}',
              flush=True)

    with open(os.path.join(ROOT, 'artifacts', 'dashboard-server.log'), 'w') as log, \
            tempfile.TemporaryDirectory() as profile:
        proc, port, admin = start_server(log)
        driver = None
        try:
            driver = browser(profile)
            driver.get(f'http://127.0.0.1:{admin}/dashboard')
            wait = WebDriverWait(driver, WAIT, poll_frequency=0.2)
            text = lambda id_: driver.find_element('id', id_).text
            try:
                wait.until(lambda d: text('visits') == '0')
                check('dashboard loads /stats and shows 0 visits', True)
            except Exception:
                check('dashboard loads /stats and shows 0 visits', False, text('status'))
            for _ in range(VISITS):
                get(f'http://127.0.0.1:{port}/')
            get(f'http://127.0.0.1:{port}/static/style.css')  # neither is a visit
            get(f'http://127.0.0.1:{port}/healthcheck')
            # Every bar as "visits:height". The visits can land in two minutes when the test runs
            # across a minute boundary, and the page may have redrawn after it: so the check is
            # that the last two bars hold all of them and each height is in proportion.
            all_bars = ('return Array.from(document.querySelectorAll("#chart rect.bar"),'
                        ' b => b.getAttribute("data-visits") + ":" + b.getBBox().height);')
            try:
                wait.until(lambda d: text('visits') == str(VISITS))
                check(f'the visits number shows {VISITS}', True)
            except Exception:
                check(f'the visits number shows {VISITS}', False, text('visits'))
            bars = [(int(v), float(h)) for v, h in
                    (bar.split(':') for bar in driver.execute_script(all_bars))]
            highest = max(v for v, _ in bars) if bars else 0
            check(f'the chart has 60 bars, the last two hold the {VISITS} visits, the tallest'
                  ' is 180 px and the rest in proportion',
                  len(bars) == 60 and sum(v for v, _ in bars[-2:]) == VISITS
                  and all(abs(h - v / highest * 180) < 0.5 for v, h in bars),
                  bars[-3:])
            check('the status line says it refreshed', text('status').startswith('Updated'),
                  text('status'))
            errors = [e for e in driver.get_log('browser') if e['level'] == 'SEVERE']
            check('the console has no errors', not errors, errors)
            driver.save_screenshot(os.path.join(ROOT, SCREENSHOT))
            print(f'screenshot: {SCREENSHOT}', flush=True)
        except Exception as error:
            check('browser session', False, repr(error))
        finally:
            if driver is not None:
                driver.quit()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
            check('server exits 0 on SIGTERM', proc.returncode == 0, proc.returncode)

    failed = results.count(False)
    print(f'{len(results) - failed} passed, {failed} failed')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
