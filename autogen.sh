#!/bin/sh
# Regenerates configure and the Makefile templates from configure.ac and
# Makefile.am; run once after a fresh clone (release tarballs do not need it).
set -e
cd "$(dirname "$0")"
autoreconf --install --force --warnings=all
