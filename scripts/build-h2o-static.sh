#!/usr/bin/env bash
# Builds libh2o-evloop.a, the one static library `make static` needs that
# Debian does not ship (libh2o-evloop-dev has only the shared library), from
# Debian's own source package of the installed version, so the headers in
# /usr/include/h2o* match it. The source comes through apt with a private
# list of deb-src entries made from the machine's own apt sources (nothing
# in /etc/apt changes); it is built with h2o's CMake as Debian builds it,
# less the shared library, mruby and the server. Needs dpkg-dev (from
# build-essential) and cmake.
#
# usage: scripts/build-h2o-static.sh DIR   (leaves DIR/lib/libh2o-evloop.a;
# quick when it is already there for the same version)
set -euo pipefail
dir=${1:?usage: scripts/build-h2o-static.sh DIR}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)

ver=$(dpkg-query -W -f='${source:Version}' libh2o-evloop-dev 2>/dev/null) || {
    echo "build-h2o-static: libh2o-evloop-dev is not installed (run scripts/install-deps.sh)" >&2
    exit 1
}
if [ -f "$dir/lib/libh2o-evloop.a" ] && [ "$(cat "$dir/VERSION" 2>/dev/null)" = "$ver" ]; then
    exit 0
fi

# deb-src twins of the machine's deb entries, in a private apt state.
apt_dir="$dir/apt"
rm -rf "$apt_dir"
mkdir -p "$apt_dir/sources" "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] && sed -n 's/^deb \(.*\)$/deb-src \1/p' "$f" >> "$apt_dir/sources/src.list"
done
for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] && sed 's/^Types: *deb$/Types: deb-src/' "$f" > "$apt_dir/sources/$(basename "$f")"
done
apt_opts=(-o Dir::Etc::SourceList=/dev/null -o Dir::Etc::SourceParts="$apt_dir/sources"
          -o Dir::State::Lists="$apt_dir/lists" -o Dir::Cache="$apt_dir/cache" -o APT::Sandbox::User=root)
echo "build-h2o-static: fetching Debian's h2o $ver source"
apt-get -q "${apt_opts[@]}" update > "$apt_dir/update.log" 2>&1 || { cat "$apt_dir/update.log" >&2; exit 1; }
rm -rf "$dir/src" "$dir/build"
mkdir -p "$dir/fetch"
(cd "$dir/fetch" && apt-get -q "${apt_opts[@]}" source --download-only "h2o=$ver" > /dev/null)
# apt checked the files against the archive's signed index; dpkg-source's
# own check would want the uploader's key, which is not installed.
dpkg-source --no-check -x "$dir"/fetch/h2o_*.dsc "$dir/src" > /dev/null

echo "build-h2o-static: building libh2o-evloop.a"
cmake -S "$dir/src" -B "$dir/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
      -DWITH_BUNDLED_SSL=OFF -DWITH_MRUBY=OFF > "$dir/configure.log" 2>&1 || { cat "$dir/configure.log" >&2; exit 1; }
cmake --build "$dir/build" --target libh2o-evloop -j "${JOBS:-$(nproc)}" > "$dir/build.log" 2>&1 ||
    { tail -40 "$dir/build.log" >&2; exit 1; }
mkdir -p "$dir/lib"
cp "$dir/build/libh2o-evloop.a" "$dir/lib/"
echo "$ver" > "$dir/VERSION"
rm -rf "$dir/fetch" "$apt_dir" "$dir"/h2o_*
