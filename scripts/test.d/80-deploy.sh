#!/usr/bin/env bash
# Deployment as users do it (issue 13): build every artifact once (scripts/package, into
# target/dist/), then install each in a clean place and use it:
#   - the systemd unit: Type=notify, watchdog, paths, `systemd-analyze security` <= 2.0;
#   - the C SDK tarball: install-c under a prefix (and a DESTDIR), a C and a C++ program built
#     with pkg-config and with CMake (shared and static), run without LD_LIBRARY_PATH;
#   - the wheel (manylinux_2_17, abi3, licenses) into a fresh venv with no Rust on PATH; the
#     sdist's contents (and, with QMAIL_DEPLOY_SDIST_BUILD=1, a build from it in another venv);
#   - the npm tarballs into a fresh app directory (real copies, no symlink), and the error
#     naming the platform when the addon package is missing;
#   - the .deb, unpacked with dpkg-deb: contents, conffile, maintainer scripts; and (as root)
#     installed for real with dpkg -i into a throwaway root (an overlay over / in a mount
#     namespace: the host is not touched): postinst's users, spool, log directory and
#     configuration modes; a web user submits and the qmail user delivers through the
#     installed package; reinstall keeps an edited conffile; remove and purge keep the spool;
#   - the unit under a real systemd (PID 1 of a PID namespace over another throwaway overlay
#     root, as a container manager boots one): the package installed, `systemctl start`
#     (Type=notify: active only once READY), the service user and its hardening seen in
#     /proc, a web user's messages delivered by the service, `systemctl reload` (SIGHUP), the
#     watchdog (WatchdogSec=3 by a drop-in, the process SIGSTOPped: killed and restarted),
#     `systemctl stop`, and dpkg -r stopping it;
#   - two users (as root): a web user only in the submit group submits from C, C++, Python and
#     Node; the dispatcher user delivers (outbox); neither reads or writes what it should not.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
target=$CARGO_TARGET_DIR
dist=$target/dist
version=$(cargo pkgid -p qmail-ffi | sed 's/.*[#@]//')
t0=$(date +%s)
step() { printf -- '-- deploy: %s (%ds)\n' "$*" "$(($(date +%s) - t0))"; }
fail() { echo "deploy: FAIL: $*" >&2; exit 1; }
checks=0
ok() { checks=$((checks + 1)); }

step "build the artifacts once (scripts/package)"
scripts/package
for f in "qmail-c-sdk-$version-x86_64-linux-gnu.tar.gz" "qmail-$version.tgz" \
    "qmail-linux-x64-gnu-$version.tgz" "qmail_spool-$version.tar.gz"; do
    [ -f "$dist/$f" ] || fail "scripts/package made no $f"
done
wheel=$(ls "$dist"/qmail_spool-"$version"-*.whl)
deb=$(ls "$dist"/qmail-dispatcher_"$version"*_amd64.deb)
ok

work=$(mktemp -d /tmp/qmail-deploy.XXXXXX)
chmod 0755 "$work"   # the two users below must reach what is built here
users_made=()
cleanup() {
    for u in "${users_made[@]}"; do
        case $u in g:*) groupdel "${u#g:}" 2>/dev/null || true ;; *) userdel "$u" 2>/dev/null || true ;; esac
    done
    rm -rf "$work"
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------
step "systemd unit: Type=notify, watchdog, paths that agree with the docs, hardening score"
unit=dispatcher-bin/qmail-dispatcher.service
grep -qx 'Type=notify' "$unit" || fail "unit is not Type=notify"
grep -q '^WatchdogSec=' "$unit" || fail "unit has no WatchdogSec"
grep -q '^ExecStart=/usr/bin/qmail-dispatcher ' "$unit" || fail "ExecStart is not the packaged /usr/bin binary"
rw=$(sed -n 's/^ReadWritePaths=//p' "$unit")
for p in $(sed -n 's/^spools = \["\(.*\)"\]/\1/p; s/^delivery_log = "\(.*\)\/[^/]*"/\1/p' dispatcher-bin/debian/dispatcher.toml); do
    case " $rw " in *" $p "*) ;; *) fail "the packaged configuration writes $p, not in ReadWritePaths=$rw" ;; esac
done
grep -q '/var/log/qmail/' docs/dispatcher.md || fail "docs/dispatcher.md's log path"
score=$(systemd-analyze security --offline=yes "$unit" 2>/dev/null \
    | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p')
[ -n "$score" ] || fail "systemd-analyze security printed no score"
awk -v s="$score" 'BEGIN { exit !(s <= 2.0) }' || fail "exposure $score > 2.0"
echo "   systemd-analyze security: $score"
ok

# ---------------------------------------------------------------------------------------
step "C SDK: the tarball's contents"
tar -C "$work" -xzf "$dist/qmail-c-sdk-$version-x86_64-linux-gnu.tar.gz"
sdk=$work/qmail-c-sdk-$version
for f in include/qmail.h include/qmail.hpp "lib/libqmail.so.$version" lib/libqmail.a \
    lib/pkgconfig/qmail.pc lib/cmake/qmail/qmail-config.cmake lib/cmake/qmail/qmail-config-version.cmake \
    share/doc/qmail/LICENSE-MIT share/doc/qmail/LICENSE-APACHE install-c; do
    [ -e "$sdk/$f" ] || fail "SDK has no $f"
done
[ "$(readlink "$sdk/lib/libqmail.so.${version%%.*}")" = "libqmail.so.$version" ] || fail "SONAME link"
[ "$(readlink "$sdk/lib/libqmail.so")" = "libqmail.so.${version%%.*}" ] || fail "dev link"
grep -q ', stripped' <<<"$(file -L "$sdk/lib/libqmail.so")" || fail "libqmail.so is not stripped"
ok

step "C SDK: install-c --prefix --libdir lib64 --destdir (staged), then --prefix (real)"
prefix=$work/prefix
"$sdk/install-c" --prefix "$prefix" --libdir lib64 --destdir "$work/stage" >/dev/null
[ -f "$work/stage$prefix/lib64/libqmail.so.$version" ] || fail "DESTDIR install"
grep -qx "libdir=$prefix/lib64" "$work/stage$prefix/lib64/pkgconfig/qmail.pc" || fail "staged .pc names the final libdir"
# the default libdir (P/lib): where CMake's find_package looks on every distribution
"$sdk/install-c" --prefix "$prefix" >/dev/null
ok

step "C and C++ programs built with pkg-config, run without LD_LIBRARY_PATH"
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
[ "$(pkg-config --modversion qmail)" = "$version" ] || fail "pkg-config version"
libdir=$(pkg-config --variable=libdir qmail)
bin=$work/bin
mkdir -p "$bin"
# shellcheck disable=SC2046
cc -std=c99 -Wall -Wextra -Werror -o "$bin/hello_c" tests/deploy/hello.c \
    $(pkg-config --cflags --libs qmail) -Wl,-rpath,"$libdir"
# shellcheck disable=SC2046
g++ -std=c++11 -Wall -Wextra -Werror -o "$bin/hello_cpp" tests/deploy/hello.cpp \
    $(pkg-config --cflags --libs qmail) -Wl,-rpath,"$libdir"
unset PKG_CONFIG_PATH
spool=$work/single-spool
for p in hello_c hello_cpp; do
    out=$(env -u LD_LIBRARY_PATH "$bin/$p" "$spool" c@example.org) || fail "$p failed"
    for id in $out; do [ -f "$spool/ready/$id" ] || fail "$p: no $spool/ready/$id"; done
done
grep -q "$libdir/libqmail.so.${version%%.*}" <<<"$(ldd "$bin/hello_c")" || fail "hello_c does not load the installed library"
ok

step "C and C++ programs built with CMake (find_package(qmail), shared and static)"
cmake -S tests/deploy -B "$work/cmake" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$work/cmake" -j 2 >/dev/null
for p in hello_c hello_cpp hello_c_static; do
    out=$(env -u LD_LIBRARY_PATH "$work/cmake/$p" "$spool" c@example.org) || fail "cmake $p failed"
    [ "$(echo "$out" | wc -l)" = 2 ] || fail "cmake $p printed $out"
done
if grep -q libqmail <<<"$(ldd "$work/cmake/hello_c_static")"; then fail "the static build loads libqmail.so"; fi
ok

# ---------------------------------------------------------------------------------------
step "Python: the wheel's tags and contents"
case $(basename "$wheel") in
    qmail_spool-"$version"-cp39-abi3-*manylinux_2_17_x86_64*.whl) ;;
    *) fail "wheel tag: $(basename "$wheel")" ;;
esac
# the system's Python (a python3 under /root, e.g. pyenv's, is not reachable by the web user)
py=/usr/bin/python3
listing=$($py -m zipfile -l "$wheel")
for f in LICENSE-MIT LICENSE-APACHE qmail/__init__.py qmail/py.typed; do
    grep -q "$f" <<<"$listing" || fail "wheel has no $f"
done
$py -m zipfile -e "$wheel" "$work/wheel"
grep -q ', stripped' <<<"$(file "$work"/wheel/qmail/_qmail*.so)" || fail "the extension is not stripped"
# manylinux_2_17 means it: no glibc symbol newer than 2.17
newest=$(objdump -T "$work"/wheel/qmail/_qmail*.so | grep -o 'GLIBC_[0-9.]*' | sort -Vu | tail -n 1)
[ "$(printf '%s\n' "$newest" GLIBC_2.17 | sort -V | tail -n 1)" = GLIBC_2.17 ] || fail "the extension needs $newest"
ok

step "Python: the wheel into a fresh venv, no Rust on PATH"
$py -m venv "$work/venv"
nopath=/usr/local/bin:/usr/bin:/bin
env PATH=$nopath "$work/venv/bin/pip" install -q --no-index --disable-pip-version-check "$wheel"
env PATH=$nopath bash -c '! command -v cargo && ! command -v rustc' >/dev/null || fail "Rust is on the clean PATH"
out=$(cd "$work" && env -u PYTHONPATH PATH=$nopath "$work/venv/bin/python" "$root/tests/deploy/submit.py" "$spool" p@example.org) \
    || fail "submit.py"
for id in $out; do [ -f "$spool/ready/$id" ] || fail "python: no ready/$id"; done
grep -qx "Name: qmail-spool" <<<"$("$work/venv/bin/pip" show qmail-spool)" || fail "distribution name"
ok

step "Python: the sdist's contents"
sd=$dist/qmail_spool-$version.tar.gz
sl=$(tar -tzf "$sd")
for f in pyproject.toml LICENSE-MIT LICENSE-APACHE qmail-core/src/lib.rs python/qmail/__init__.py; do
    grep -q "$f" <<<"$sl" || fail "sdist has no $f"
done
if [ "${QMAIL_DEPLOY_SDIST_BUILD:-0}" = 1 ]; then
    step "Python: pip install the sdist in another venv (builds with Rust)"
    $py -m venv "$work/venv-sdist"
    "$work/venv-sdist/bin/pip" install -q --disable-pip-version-check "$sd"
    "$work/venv-sdist/bin/python" -c 'import qmail; print(qmail.__name__)' >/dev/null
else
    echo "   skipped: building the sdist (set QMAIL_DEPLOY_SDIST_BUILD=1; a full Rust build, ~5 min)"
fi
ok

# ---------------------------------------------------------------------------------------
step "Node: the tarballs into a fresh app directory"
app=$work/app
mkdir -p "$app"
printf '{ "name": "deploy-app", "version": "1.0.0", "private": true }\n' > "$app/package.json"
(cd "$app" && npm install --no-audit --no-fund --silent \
    "$dist/qmail-linux-x64-gnu-$version.tgz" "$dist/qmail-$version.tgz")
[ -d "$app/node_modules/qmail" ] && [ ! -L "$app/node_modules/qmail" ] || fail "node_modules/qmail is not a real directory"
addon=$app/node_modules/qmail-linux-x64-gnu/qmail.linux-x64-gnu.node
[ -f "$addon" ] || fail "no addon from the platform package"
grep -q ', stripped' <<<"$(file "$addon")" || fail "the addon is not stripped"
[ ! -e "$app/node_modules/qmail/qmail.linux-x64-gnu.node" ] || fail "the main package carries an addon"
for f in LICENSE-MIT LICENSE-APACHE README.md; do [ -f "$app/node_modules/qmail/$f" ] || fail "npm: no $f"; done
grep -q '"private"' "$app/node_modules/qmail/package.json" && fail "the main package is private"
cp tests/deploy/submit.js "$app/"
out=$(cd "$app" && node submit.js "$spool" n@example.org) || fail "submit.js"
for id in $out; do [ -f "$spool/ready/$id" ] || fail "node: no ready/$id"; done
# without the platform package: an error naming the platform
cp -r "$app" "$work/app-noaddon"
rm -rf "$work/app-noaddon/node_modules/qmail-linux-x64-gnu"
err=$(cd "$work/app-noaddon" && node -e "try { require('qmail') } catch (e) { console.log(e.code, e.message) }")
grep -q 'ERR_QMAIL_NO_NATIVE_ADDON.*linux-x64-gnu' <<<"$err" || fail "no-addon error: $err"
ok

# ---------------------------------------------------------------------------------------
step "Debian package: dpkg-deb contents, conffile, maintainer scripts"
info=$(dpkg-deb -I "$deb")
grep -q '^ Package: qmail-dispatcher$' <<<"$info" || fail "package name"
grep -q '^ Depends:.*libc6' <<<"$info" || fail "Depends: $info"
contents=$(dpkg-deb -c "$deb")
for f in ./usr/bin/qmail-dispatcher ./lib/systemd/system/qmail-dispatcher.service \
    ./usr/lib/sysusers.d/qmail-dispatcher.conf ./etc/qmail/dispatcher.toml \
    ./usr/share/doc/qmail-dispatcher/dispatcher.md ./usr/share/doc/qmail-dispatcher/LICENSE-MIT \
    ./usr/share/doc/qmail-dispatcher/LICENSE-APACHE ./usr/share/man/man1/qmail-dispatcher \
    ./usr/share/man/man1/qmail-dispatcher-spool-init \
    ./usr/share/bash-completion/completions/qmail-dispatcher \
    ./usr/share/zsh/vendor-completions/_qmail-dispatcher \
    ./usr/share/fish/vendor_completions.d/qmail-dispatcher.fish; do
    grep -q " $f" <<<"$contents" || fail "the .deb has no $f"
done
ctl=$work/deb-control
dpkg-deb -e "$deb" "$ctl"
grep -qx /etc/qmail/dispatcher.toml "$ctl/conffiles" || fail "dispatcher.toml is not a conffile"
for s in postinst prerm postrm; do
    [ -x "$ctl/$s" ] || fail "no executable $s"
    sh -n "$ctl/$s" || fail "$s: syntax"
done
grep -q 'spool init /var/spool/qmail --user qmail --submit-group qmail-submit' "$ctl/postinst" || fail "postinst spool init"
grep -q 'systemd-sysusers qmail-dispatcher.conf' "$ctl/postinst" || fail "postinst sysusers"
grep -q 'useradd --system' "$ctl/postinst" || fail "postinst useradd fallback"
dpkg-deb -x "$deb" "$work/deb-root"
grep -q ', stripped' <<<"$(file "$work/deb-root/usr/bin/qmail-dispatcher")" || fail "the packaged binary is not stripped"
doc=$(sed -n 's|^Documentation=.*file://\(/[^ ]*\).*|\1|p' "$work/deb-root/lib/systemd/system/qmail-dispatcher.service")
[ -f "$work/deb-root$doc" ] || fail "Documentation=$doc is not in the package"
grep -q '^\.TH' <<<"$(zcat -f "$work"/deb-root/usr/share/man/man1/qmail-dispatcher.1.gz)" \
    || fail "the man page is not roff"
grep -q "$version" <<<"$("$work/deb-root/usr/bin/qmail-dispatcher" --version)" || fail "packaged binary --version"
ok

# ---------------------------------------------------------------------------------------
if [ "$(id -u)" != 0 ] || ! command -v setpriv >/dev/null; then
    echo "   skipped: the two-user run needs root and setpriv (it creates users)"
else
    step "two users: spool init, a web user only in the submit group, the dispatcher user"
    # test users with names of their own (removed at exit); the package makes qmail/qmail-submit
    sfx=$$
    g=qmts$sfx d=qmtd$sfx w=qmtw$sfx w2=qmtx$sfx
    groupadd --system "$g"; users_made+=("g:$g")
    useradd --system --user-group --no-create-home --shell /usr/sbin/nologin -G "$g" "$d"; users_made+=("$d" "g:$d")
    useradd --system --user-group --no-create-home --shell /usr/sbin/nologin "$w"; users_made+=("$w" "g:$w")
    useradd --system --user-group --no-create-home --shell /usr/sbin/nologin "$w2"; users_made+=("$w2" "g:$w2")
    qd=$work/deb-root/usr/bin/qmail-dispatcher
    sp=$work/two/spool
    "$qd" spool init "$sp" --user "$d" --submit-group "$g" >/dev/null
    chmod 0755 "$work/two"
    # the web user: its own uid/gid plus the submit group, nothing else
    as_web() { setpriv --reuid "$w" --regid "$w" --groups "$g" --inh-caps=-all -- "$@"; }
    as_web2() { setpriv --reuid "$w2" --regid "$w2" --groups "$g" --inh-caps=-all -- "$@"; }
    as_disp() { setpriv --reuid "$d" --regid "$d" --init-groups --inh-caps=-all -- "$@"; }
    ids=()
    ids+=($(as_web env -u LD_LIBRARY_PATH "$bin/hello_c" "$sp" c@example.org)) || fail "web: C"
    ids+=($(as_web env -u LD_LIBRARY_PATH "$work/cmake/hello_cpp" "$sp" cpp@example.org)) || fail "web: C++"
    # a copy the web user can read: the checkout may sit under a 0700 directory (mktemp -d)
    install -m 0644 "$root/tests/deploy/submit.py" "$work/submit.py"
    ids+=($(cd "$work" && as_web env PATH=$nopath "$work/venv/bin/python" "$work/submit.py" "$sp" p@example.org)) || fail "web: Python"
    ids+=($(cd "$app" && as_web node submit.js "$sp" n@example.org)) || fail "web: Node"
    [ ${#ids[@]} = 8 ] || fail "web submitted ${#ids[@]} messages, expected 8: ${ids[*]}"
    for id in "${ids[@]}"; do
        f=$sp/ready/$id
        [ "$(stat -c '%U %G %a' "$f")" = "$w $g 640" ] || fail "$f: $(stat -c '%U %G %a' "$f"), expected $w $g 640"
    done
    # what the web user may not do: list the queue, read or write the dispatcher's directories,
    # remove another web user's file (sticky)
    if as_web ls "$sp/ready" >/dev/null 2>&1; then fail "the web user lists ready/"; fi
    for dd in active deferred state outbox; do
        if as_web ls "$sp/$dd" >/dev/null 2>&1; then fail "the web user lists $dd/"; fi
        if as_web touch "$sp/$dd/x" 2>/dev/null; then fail "the web user writes into $dd/"; fi
    done
    if as_web2 rm -f "$sp/ready/${ids[0]}" 2>/dev/null && [ ! -e "$sp/ready/${ids[0]}" ]; then
        fail "another web user removed a message"
    fi
    if as_web2 cat "$sp/ready/${ids[0]}" >/dev/null 2>&1; then :; fi  # group read is by design
    # a file the dispatcher cannot read (0600, as an older qmail made them): check-config names it
    as_web sh -c "umask 077; printf x > '$sp/tmp/stray' && mv '$sp/tmp/stray' '$sp/ready/zz-stray'"
    if out=$(as_disp "$qd" --spool "$sp" check-config 2>&1); then fail "check-config passed an unreadable file: $out"; fi
    grep -q 'zz-stray' <<<"$out" || fail "check-config did not name the file: $out"
    rm -f "$sp/ready/zz-stray"
    as_disp "$qd" --spool "$sp" check-config >/dev/null || fail "check-config as the dispatcher user"
    # the dispatcher cannot modify what the web user wrote (group read only)
    if as_disp sh -c "printf x >> '$sp/ready/${ids[0]}'" 2>/dev/null; then fail "the dispatcher wrote into a web user's file"; fi
    out=$(as_disp "$qd" --spool "$sp" drain) || fail "drain as the dispatcher user"
    [ "$out" = "delivered 8, deferred 0, failed 0, corrupt 0" ] || fail "drain: $out"
    [ "$(ls "$sp/outbox" | wc -l)" -ge 8 ] || fail "outbox: $(ls "$sp/outbox")"
    outbox=$(ls "$sp/outbox")
    for id in "${ids[@]}"; do grep -q "$id" <<<"$outbox" || fail "$id is not in outbox/"; done
    if as_web cat "$sp/outbox/"* >/dev/null 2>&1; then fail "the web user reads delivered mail"; fi
    as_disp "$qd" --spool "$sp" status >/dev/null || fail "status as the dispatcher user"
    ok
fi

# ---------------------------------------------------------------------------------------
# dpkg -i for real, in a root of its own: an overlay whose lower layer is / and whose upper
# layer is under $work, mounted in a private mount namespace for each command, so what dpkg
# and the maintainer scripts write (users, /etc, /usr/bin, /var/spool) lands in $work only
ovl=$work/ovl
mkdir -p "$ovl/u" "$ovl/w" "$ovl/r"
in_root() {
    unshare --mount --fork -- sh -c '
        o=$1; shift
        mount -t overlay overlay -o "lowerdir=/,upperdir=$o/u,workdir=$o/w" "$o/r" &&
            mount --bind /proc "$o/r/proc" && mount --bind /dev "$o/r/dev" &&
            exec chroot "$o/r" "$@"' in_root "$ovl" "$@"
}
if [ "$(id -u)" != 0 ] || ! in_root true 2>/dev/null; then
    echo "   skipped: dpkg -i in a throwaway root needs root, unshare and overlayfs"
elif dpkg -s qmail-dispatcher >/dev/null 2>&1 || getent passwd qmail >/dev/null; then
    echo "   skipped: dpkg -i in a throwaway root: this host already has qmail-dispatcher or a qmail user"
else
    step "Debian package: dpkg -i, reinstall, remove, purge in a throwaway root (overlay over /)"
    out=$(in_root dpkg -i "$deb" 2>&1) || fail "dpkg -i: $out"
    grep -q 'edit /etc/qmail/dispatcher.toml' <<<"$out" || fail "postinst's advice: $out"
    [ "$(in_root dpkg-query -W -f '${Status}' qmail-dispatcher)" = "install ok installed" ] || fail "not installed"
    in_root /usr/bin/qmail-dispatcher --version | grep -q "$version" || fail "installed --version"
    # postinst: the two users (sysusers.d, or useradd), the spool, the log directory, the conffile
    pw=$(in_root getent passwd qmail) || fail "postinst made no qmail user"
    [ "$(cut -d: -f6,7 <<<"$pw")" = "/var/spool/qmail:/usr/sbin/nologin" ] || fail "qmail user: $pw"
    in_root id -nG qmail | tr ' ' '\n' | grep -qx qmail-submit || fail "qmail is not in qmail-submit"
    sgid=$(in_root getent group qmail-submit | cut -d: -f3)
    [ -n "$sgid" ] || fail "postinst made no qmail-submit group"
    [ "$(in_root stat -c '%U %G %a' /etc/qmail/dispatcher.toml)" = "root qmail 640" ] || fail "conffile mode"
    [ "$(in_root stat -c '%U %G %a' /var/log/qmail)" = "qmail qmail 750" ] || fail "log directory"
    [ "$(in_root stat -c '%U %G %a' /var/spool/qmail/ready)" = "qmail qmail-submit 3730" ] \
        || fail "spool ready/: $(in_root stat -c '%U %G %a' /var/spool/qmail/ready)"
    [ "$(in_root stat -c '%U %a' /var/spool/qmail/active)" = "qmail 700" ] || fail "spool active/"
    # a web user in qmail-submit only submits (C, through the SDK built above); the qmail user
    # delivers with the packaged configuration (no relay in it: the outbox)
    # (hello_c submits two messages and prints their ids)
    pkg_ids=($(in_root setpriv --reuid 65534 --regid 65534 --groups "$sgid" --inh-caps=-all -- \
        env -u LD_LIBRARY_PATH "$bin/hello_c" /var/spool/qmail pkg@example.org)) || fail "web: submit into the installed spool"
    [ ${#pkg_ids[@]} = 2 ] || fail "web submitted ${#pkg_ids[@]} messages, expected 2: ${pkg_ids[*]}"
    id1=${pkg_ids[0]}
    as_qmail() { in_root setpriv --reuid qmail --regid qmail --init-groups --inh-caps=-all -- env QMAIL_LOG=warn "$@"; }
    as_qmail /usr/bin/qmail-dispatcher --config /etc/qmail/dispatcher.toml check-config >/dev/null \
        || fail "check-config of the packaged configuration as qmail"
    out=$(as_qmail /usr/bin/qmail-dispatcher --config /etc/qmail/dispatcher.toml drain) || fail "drain as qmail: $out"
    [ "$out" = "delivered 2, deferred 0, failed 0, corrupt 0" ] || fail "drain: $out"
    for id in "${pkg_ids[@]}"; do
        in_root test -f "/var/spool/qmail/outbox/$id.eml" || fail "$id is not in the installed spool's outbox"
        grep -q "$id" "$ovl/u/var/log/qmail/delivery.log" || fail "the delivery log has no $id"
    done
    # reinstall (the upgrade path: prerm upgrade, postinst configure): an edited conffile stays
    in_root sh -c 'echo "# edited by the operator" >> /etc/qmail/dispatcher.toml'
    out=$(in_root dpkg -i "$deb" 2>&1) || fail "dpkg -i again: $out"
    in_root grep -q '^# edited by the operator' /etc/qmail/dispatcher.toml || fail "reinstall replaced the edited conffile"
    [ "$(in_root stat -c '%U %G %a' /etc/qmail/dispatcher.toml)" = "root qmail 640" ] || fail "conffile mode after reinstall"
    # remove: the binary goes; the configuration, the spool (mail), the log and the users stay
    out=$(in_root dpkg -r qmail-dispatcher 2>&1) || fail "dpkg -r: $out"
    if in_root test -e /usr/bin/qmail-dispatcher; then fail "dpkg -r left the binary"; fi
    in_root test -f /etc/qmail/dispatcher.toml || fail "dpkg -r removed the conffile"
    in_root test -f "/var/spool/qmail/outbox/$id1.eml" || fail "dpkg -r removed mail"
    in_root getent passwd qmail >/dev/null || fail "dpkg -r removed the qmail user"
    # purge: the configuration goes too; mail, log and users are kept, and it says so
    out=$(in_root dpkg --purge qmail-dispatcher 2>&1) || fail "dpkg --purge: $out"
    if in_root test -e /etc/qmail; then fail "purge left /etc/qmail"; fi
    grep -q 'are kept' <<<"$out" || fail "purge's note: $out"
    in_root test -f "/var/spool/qmail/outbox/$id1.eml" || fail "purge removed mail"
    [ -z "$(in_root dpkg-query -W -f '${Status}' qmail-dispatcher 2>/dev/null | grep installed)" ] || fail "still installed after purge"
    # and none of it reached the host
    if dpkg -s qmail-dispatcher >/dev/null 2>&1 || getent passwd qmail >/dev/null || [ -e /etc/qmail/dispatcher.toml ]; then
        fail "the throwaway root leaked into the host"
    fi
    ok
fi

# ---------------------------------------------------------------------------------------
# The unit under systemd: a systemd of its own as PID 1 of a new PID namespace, in a mount
# namespace over a second overlay root (what a container manager does); every command below
# runs inside it through nsenter. The whole namespace dies with its PID 1 at the end.
sdo=$work/sd
mkdir -p "$sdo/u" "$sdo/w" "$sdo/r"
sd_pid=
sd_stop() {
    if [ -n "$sd_pid" ]; then kill -KILL "$sd_pid" 2>/dev/null || true; sd_pid=; fi
}
trap 'sd_stop; cleanup' EXIT
if [ "$(id -u)" != 0 ] || ! in_root true 2>/dev/null || [ ! -x /lib/systemd/systemd ] || ! command -v nsenter >/dev/null; then
    echo "   skipped: the unit under systemd needs root, unshare, overlayfs, nsenter and /lib/systemd/systemd"
elif dpkg -s qmail-dispatcher >/dev/null 2>&1 || getent passwd qmail >/dev/null; then
    echo "   skipped: the unit under systemd: this host already has qmail-dispatcher or a qmail user"
else
    step "the unit under systemd (PID 1 of its own namespaces): start, notify, hardening, delivery, reload, watchdog, stop"
    cat > "$work/sd-boot.sh" <<'BOOT'
o=$1 work=$2
mount -t overlay overlay -o "lowerdir=/,upperdir=$o/u,workdir=$o/w" "$o/r" || exit 1
mount -t proc proc "$o/r/proc" && mount --rbind /sys "$o/r/sys" && mount --rbind /dev "$o/r/dev" &&
    mount -t tmpfs tmpfs "$o/r/run" && mount -t tmpfs tmpfs "$o/r/tmp" || exit 1
# this run's directory (the programs built above) at its own path: the rest of /tmp stays out
mkdir -p "$o/r$work" && mount --bind "$work" "$o/r$work" || exit 1
# basic.target: the host's enabled services (postgresql, postfix) are not started in here
exec chroot "$o/r" env container=qmail-test /lib/systemd/systemd --system --log-target=journal --unit=basic.target
BOOT
    unshare --pid --mount --fork --propagation private -- sh "$work/sd-boot.sh" "$sdo" "$work" >"$work/sd-boot.log" 2>&1 &
    boot=$!
    # the systemd process (unshare's child), then the system up
    for _ in $(seq 100); do
        sd_pid=$(pgrep -P "$boot" -x systemd || true)
        [ -n "$sd_pid" ] && break
        sleep 0.1
    done
    [ -n "$sd_pid" ] || fail "systemd did not start: $(cat "$work/sd-boot.log")"
    in_sd() { nsenter -t "$sd_pid" -m -p -r -w "$@"; }
    # the unit's journal, read whole (a `journalctl | grep -q` would fail under pipefail when
    # grep exits first and journalctl dies of SIGPIPE)
    journal() { in_sd journalctl -u qmail-dispatcher --no-pager "$@" 2>/dev/null || true; }
    logged() { grep -q -- "$1" <<<"$(journal -o cat)"; }
    for _ in $(seq 300); do
        st=$(in_sd systemctl is-system-running 2>/dev/null || true)
        case $st in running|degraded) break ;; esac
        sleep 0.1
    done
    case $st in running|degraded) ;; *) fail "systemd did not come up: $st" ;; esac
    # the checkout may sit under /tmp, which is a tmpfs in there: the package goes via $work
    cp "$deb" "$work/"
    out=$(in_sd dpkg -i "$work/$(basename "$deb")" 2>&1) || fail "dpkg -i under systemd: $out"
    in_sd systemctl start qmail-dispatcher.service || fail "systemctl start: $(journal | tail -20)"
    # Type=notify: start returns once READY=1 arrived
    [ "$(in_sd systemctl is-active qmail-dispatcher)" = active ] || fail "not active"
    [ "$(in_sd systemctl show -p StatusText --value qmail-dispatcher)" = "serving 1 spool(s)" ] \
        || fail "STATUS=: $(in_sd systemctl show -p StatusText --value qmail-dispatcher)"
    main=$(in_sd systemctl show -p MainPID --value qmail-dispatcher)
    [ "$(in_sd ps -o user= -p "$main")" = qmail ] || fail "the service does not run as qmail"
    in_sd grep -q '^NoNewPrivs:[[:space:]]*1' "/proc/$main/status" || fail "NoNewPrivs"
    in_sd grep -q '^CapEff:[[:space:]]*0000000000000000' "/proc/$main/status" || fail "the service has capabilities"
    in_sd grep -q '^Seccomp:[[:space:]]*2' "/proc/$main/status" || fail "no seccomp filter"
    # a web user (nobody in qmail-submit) submits; the service delivers (no relay: outbox)
    sgid=$(in_sd getent group qmail-submit | cut -d: -f3)
    sd_ids=($(in_sd setpriv --reuid 65534 --regid 65534 --groups "$sgid" --inh-caps=-all -- \
        env -u LD_LIBRARY_PATH "$bin/hello_c" /var/spool/qmail sd@example.org)) || fail "web: submit to the service"
    for _ in $(seq 150); do
        n=0
        for id in "${sd_ids[@]}"; do in_sd test -f "/var/spool/qmail/outbox/$id.eml" && n=$((n + 1)); done
        [ "$n" = "${#sd_ids[@]}" ] && break
        sleep 0.1
    done
    [ "$n" = 2 ] || fail "the service delivered $n of ${sd_ids[*]}"
    # reload: SIGHUP to the same process
    in_sd systemctl reload qmail-dispatcher || fail "systemctl reload"
    for _ in $(seq 100); do
        logged 'SIGHUP: configuration reloaded' && break
        sleep 0.1
    done
    logged 'SIGHUP: configuration reloaded' || fail "reload not logged"
    [ "$(in_sd systemctl show -p MainPID --value qmail-dispatcher)" = "$main" ] || fail "reload restarted the process"
    # the watchdog: a process that stops answering (SIGSTOP) is killed and started again
    in_sd mkdir -p /etc/systemd/system/qmail-dispatcher.service.d
    in_sd sh -c 'printf "[Service]\nWatchdogSec=3\n" > /etc/systemd/system/qmail-dispatcher.service.d/watchdog.conf'
    in_sd systemctl daemon-reload
    in_sd systemctl restart qmail-dispatcher || fail "restart with WatchdogSec=3"
    main=$(in_sd systemctl show -p MainPID --value qmail-dispatcher)
    [ "$(in_sd systemctl show -p WatchdogUSec --value qmail-dispatcher)" = 3s ] || fail "the drop-in's WatchdogSec"
    # alive past several watchdog periods while it answers
    sleep 4
    [ "$(in_sd systemctl show -p MainPID --value qmail-dispatcher)" = "$main" ] || fail "killed by the watchdog while healthy"
    in_sd kill -STOP "$main"
    for _ in $(seq 200); do
        now=$(in_sd systemctl show -p MainPID --value qmail-dispatcher)
        [ "$now" != "$main" ] && [ "$now" != 0 ] && [ "$(in_sd systemctl is-active qmail-dispatcher)" = active ] && break
        sleep 0.1
    done
    [ "$now" != "$main" ] && [ "$now" != 0 ] || fail "the watchdog did not restart a stopped process"
    [ "$(in_sd systemctl show -p NRestarts --value qmail-dispatcher)" = 1 ] || fail "NRestarts after the watchdog"
    grep -qi 'watchdog timeout' <<<"$(journal)" || fail "no watchdog timeout in the journal"
    # stop: SIGTERM, the summary logged, exit 0; then dpkg -r stops a running service itself
    in_sd systemctl stop qmail-dispatcher
    [ "$(in_sd systemctl show -p ExecMainStatus --value qmail-dispatcher)" = 0 ] || fail "stopped with a non-zero status"
    for _ in $(seq 100); do
        logged 'dispatcher stopped' && break
        sleep 0.1
    done
    logged 'dispatcher stopped' \
        || fail "no summary at stop: $(journal -o cat | tail -8)"
    in_sd systemctl start qmail-dispatcher
    out=$(in_sd dpkg -r qmail-dispatcher 2>&1) || fail "dpkg -r under systemd: $out"
    if in_sd pgrep -x qmail-dispatche >/dev/null; then fail "dpkg -r left the service running"; fi
    sd_stop
    ok
fi

step "sizes (bytes)"
cat "$dist/sizes.txt"
printf 'deploy: %d passed, 0 failed (%ds)\n' "$checks" "$(($(date +%s) - t0))"
