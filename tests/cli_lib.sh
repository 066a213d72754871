# Helpers of the CLI end-to-end scripts (sourced): pass/fail counters and expect_fail.
passes=0
failures=0
ok() { passes=$((passes + 1)); }
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }

# expect_fail CODE PATTERN -- command...: exit code and stderr must match.
expect_fail() {
  local code="$1" pattern="$2"
  shift 3
  local err rc
  err=$("$@" 2>&1 >/dev/null)
  rc=$?
  if [ "$rc" -ne "$code" ]; then fail "'$*' exited $rc, expected $code ($err)"; return; fi
  if ! grep -qE -- "$pattern" <<<"$err"; then fail "'$*': message '$err' lacks /$pattern/"; return; fi
  ok
}
