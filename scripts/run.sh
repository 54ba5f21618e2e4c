#!/usr/bin/env bash
# `make run`: starts kobod on its embedded store in ./var and shows how to use it.
set -euo pipefail
listen=${KOBO_LISTEN:-127.0.0.1:8080}
data=${KOBO_DATA:-var}
mkdir -p "$data"
cat <<MSG
Kobo is starting on http://$listen with its data in ./$data  (Ctrl-C stops it cleanly)

Try, in another terminal:
  curl -s -XPOST http://$listen/v1/accounts -d '{"id":"cash:NGN","currency":"NGN","allow_negative":true}'
  curl -s -XPOST http://$listen/v1/accounts -d '{"id":"wallet:ada","currency":"NGN"}'
  curl -s -XPOST http://$listen/v1/transfers -d '{"id":"tx:1","from":"cash:NGN","to":"wallet:ada","amount":5000,"currency":"NGN"}'
  curl -s http://$listen/v1/accounts/wallet:ada
  build/kobo --server http://$listen history wallet:ada

MSG
exec build/kobod --listen "$listen" --data "$data"
