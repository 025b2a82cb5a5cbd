#!/usr/bin/env bash
# Installs the Autobahn testsuite's `wstest` (the fuzzing client the hub's WebSocket layer is
# tested against) under ~/.cache/tlsgate/autobahn, and prints the path of its launcher.
#
# wstest runs on Python 2.7 only, and Debian 12 ships no Python 2. Debian 11's PyPy 2.7 is
# unpacked into the cache instead of installed (so nothing of Debian 11 reaches the system's
# package set), with the two libraries Debian 12 no longer has (libffi7, libssl1.1). pip for
# it comes from PyPI's last Python 2 wheels, then wstest's dependencies at versions that still
# support Python 2 (the pins wstest 25.10.1 was released with).
#
# Idempotent: a finished install is reused while its stamp matches this script's pins.
set -euo pipefail

cache="${XDG_CACHE_HOME:-$HOME/.cache}/tlsgate/autobahn"
pins=(
  autobahntestsuite==25.10.1 'autobahn[twisted]==0.10.9' txaio==2.1.0 Twisted==19.10.0
  incremental==16.10.1 zope.interface==4.6.0 pyOpenSSL==19.1.0 cryptography==3.3.2
  service_identity==18.1.0 klein==17.10.0 Werkzeug==1.0.1 jinja2==2.11.3 markupsafe==1.1.1
  unittest2==1.1.0 six==1.16.0
)
stamp="pypy 7.3.3+dfsg-2 (bullseye); ${pins[*]}"

if [ -x "$cache/wstest" ] && [ "$(cat "$cache/stamp" 2>/dev/null)" = "$stamp" ] \
  && "$cache/wstest" --autobahnversion >/dev/null 2>&1; then
  echo "$cache/wstest"
  exit 0
fi

sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
# cryptography 3.3.2 has no PyPy 2 wheel: it is compiled.
command -v gcc >/dev/null 2>&1 || {
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq gcc libc6-dev
}

work="$cache.tmp"
rm -rf "$work"
mkdir -p "$work/apt/lists/partial" "$work/apt/cache/archives/partial" "$work/apt/parts" "$work/debs"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main" \
  >"$work/apt/sources.list"
# A private package list: the system's sources and state are neither read nor changed.
apt_opts=(
  -o "Dir::Etc::SourceList=$work/apt/sources.list" -o "Dir::Etc::SourceParts=$work/apt/parts"
  -o "Dir::State::Lists=$work/apt/lists" -o "Dir::Cache=$work/apt/cache"
  -o "APT::Sandbox::User=root" -o "Debug::NoLocking=1"
)
echo "autobahn: downloading Debian 11's PyPy 2.7" >&2
apt-get "${apt_opts[@]}" update -qq >&2
(cd "$work/debs" && apt-get "${apt_opts[@]}" download -qq \
  pypy/bullseye pypy-lib/bullseye pypy-dev/bullseye libffi7/bullseye libssl1.1/bullseye \
  libssl-dev/bullseye >&2)
root="$work/pypy"
for deb in "$work/debs"/*.deb; do dpkg-deb -x "$deb" "$root"; done
rm -rf "$work/apt" "$work/debs"

export LD_LIBRARY_PATH="$root/usr/lib/x86_64-linux-gnu"
pypy="$root/usr/lib/pypy/bin/pypy-c"
"$pypy" -c 'import ssl' >&2

echo "autobahn: installing pip and wstest for PyPy 2.7" >&2
python3 -m pip download --quiet --dest "$work/wheels" --only-binary=:all: --python-version 2.7 \
  pip==20.3.4 setuptools==44.1.1 wheel==0.37.1 >&2
# --no-compile: Debian's PyPy names its .pyc files in a way pip 20 does not expect.
"$pypy" "$work/wheels/pip-20.3.4-py2.py3-none-any.whl/pip" install --quiet --no-compile \
  --no-warn-script-location --no-index --find-links "$work/wheels" pip setuptools wheel >&2
pip=("$pypy" -m pip install --quiet --no-compile --no-build-isolation --disable-pip-version-check
  --no-warn-script-location)
export CFLAGS="-I$root/usr/include -I$root/usr/include/x86_64-linux-gnu"
export LDFLAGS="-L$root/usr/lib/x86_64-linux-gnu"
# Twisted's setup needs incremental before it is read; the newest one is Python 3 only.
"${pip[@]}" incremental==16.10.1 six==1.16.0 >&2
# wstest's own package names no dependencies (its requirements file is not in the sdist).
"${pip[@]}" "${pins[@]:1}" >&2
"${pip[@]}" --no-deps "${pins[0]}" >&2
rm -rf "$work/wheels"

# PyPy finds its library from where its binary is, so the finished tree can move into place;
# the launcher runs the wstest script with the interpreter (its #! line names the old place).
rm -rf "$cache"
mv "$work" "$cache"
root="$cache/pypy"
cat >"$cache/wstest" <<EOF
#!/bin/sh
LD_LIBRARY_PATH="$root/usr/lib/x86_64-linux-gnu\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" \\
  exec "$root/usr/lib/pypy/bin/pypy-c" "$root/usr/local/bin/wstest" "\$@"
EOF
chmod +x "$cache/wstest"
"$cache/wstest" --autobahnversion >&2
echo "$stamp" >"$cache/stamp"
echo "$cache/wstest"
