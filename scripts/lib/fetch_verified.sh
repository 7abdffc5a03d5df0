# Sourced by the fetch scripts. fetch_verified NAME URL SHA256 FILE: downloads URL to FILE unless
# FILE is already there with that SHA-256; a download that does not match is deleted and the
# script exits, so nothing unverified is ever unpacked.
fetch_verified() {
  local name="$1" url="$2" sum="$3" file="$4"
  if [[ -f "$file" ]] && echo "$sum  $file" | sha256sum --check --status; then
    echo "ok       $name (cached)"
    return
  fi
  echo "fetching $name"
  curl --fail --silent --show-error --location --retry 3 --output "$file.part" "$url"
  if ! echo "$sum  $file.part" | sha256sum --check --status; then
    echo "error: $name: SHA-256 mismatch for $url (expected $sum); nothing was unpacked" >&2
    rm -f "$file.part"
    exit 1
  fi
  mv "$file.part" "$file"
}
