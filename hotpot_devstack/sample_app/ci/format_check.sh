#!/bin/sh
# Layout check of the C sources: no tabs, no trailing blanks, lines of at most 120 characters,
# a final newline. Prints every offending line and fails if there is one.
status=0
for file in src/*.c; do
    if grep -n "$(printf '\t')" "$file"; then echo "$file: tabs (indent with 4 spaces)"; status=1; fi
    if grep -n ' $' "$file"; then echo "$file: trailing blanks"; status=1; fi
    if awk 'length > 120 { printf "%s:%d: line longer than 120 characters\n", FILENAME, FNR; bad = 1 } END { exit bad }' "$file"; then :; else status=1; fi
    if [ -n "$(tail -c 1 "$file")" ]; then echo "$file: no newline at the end"; status=1; fi
done
[ "$status" -eq 0 ] && echo "format ok: src/*.c"
exit "$status"
