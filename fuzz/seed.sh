#!/bin/sh
# Fills the (gitignored) corpora with the seeds: the committed NIP-01
# messages and every proof-bundle test vector of docs/vectors/bundles.
set -eu
cd "$(dirname "$0")"
mkdir -p corpus/client_message corpus/filter_match corpus/bundle_verify
cp seeds/client_message/* corpus/client_message/
cp ../docs/vectors/bundles/* corpus/bundle_verify/
