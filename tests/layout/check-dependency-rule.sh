#!/bin/sh
# usage: check-dependency-rule.sh <source root>
#
# The dependency rule (STYLE.md section 1), checked on the source tree. Fails, printing each
# offending line as "file:line: text", when
#   - a file under sdk/, plugins/ or examples/ includes a host/ header, or
#   - a public SDK header (sdk/include/payhost/) names Boost.Asio, OpenSSL or a host type.
# Comments are ignored in the second check: a header may say "the host" or "OpenSSL" in prose.
set -u
root=${1:?usage: check-dependency-rule.sh <source root>}
cd "$root" || exit 2

sources() {
  for dir in "$@"; do
    [ -d "$dir" ] || continue
    find "$dir" -type f \( -name '*.h' -o -name '*.hh' -o -name '*.hpp' -o -name '*.inl' \
      -o -name '*.c' -o -name '*.cc' -o -name '*.cpp' -o -name '*.cxx' \) -print
  done | LC_ALL=C sort
}

host_includes=$(sources sdk plugins examples | while IFS= read -r file; do
  awk '/^[ \t]*#[ \t]*include[ \t]*[<"]([^>"]*\/)?host\// { print FILENAME ":" FNR ": " $0 }' \
    "$file"
done)

sdk_names=$(sources sdk/include/payhost | while IFS= read -r file; do
  awk '
    {
      code = $0
      gsub(/\/\*.*\*\//, "", code)
      sub(/\/\/.*/, "", code)
      if (code ~ /#[ \t]*include[ \t]*[<"](boost\/asio|openssl\/)/ ||
          code ~ /(^|[^A-Za-z0-9_])(boost::asio|asio::)/ ||
          code ~ /(^|[^A-Za-z0-9_])(SSL_[A-Za-z_]+|EVP_[A-Za-z_]+|X509[A-Za-z0-9_]*|BIO_[A-Za-z_]+|OPENSSL_[A-Za-z_]+)/ ||
          code ~ /(^|[^A-Za-z0-9_])host::/ ||
          code ~ /namespace[ \t]+(payhost::)?host([^A-Za-z0-9_:]|$)/)
        print FILENAME ":" FNR ": " $0
    }' "$file"
done)

status=0
if [ -n "$host_includes" ]; then
  echo "Dependency rule broken: nothing outside host/ may include a host/ header:"
  echo "$host_includes"
  status=1
fi
if [ -n "$sdk_names" ]; then
  echo "Dependency rule broken: SDK headers may not name Boost.Asio, OpenSSL or host types:"
  echo "$sdk_names"
  status=1
fi
[ $status -eq 0 ] && echo "Dependency rule holds in $root"
exit $status
