-- wrk script for bench/http/run.sh: POST a ~200-byte transfer body to
-- /v1/transfers on every connection (keep-alive, Content-Length).
wrk.method = "POST"
wrk.path = "/v1/transfers"
wrk.body = '{"id":"tx:000123456","from":"wallet:42","to":"wallet:77","amount":2500,"currency":"NGN","pending":false,"timeout_seconds":0,"metadata":{"order":"ord-20261202-000123","channel":"api","ref":"inv-7781"}}'
wrk.headers["Content-Type"] = "application/json"
