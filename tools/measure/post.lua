-- wrk script: POST a ~150-byte transfer body.
wrk.method = "POST"
wrk.body = '{"id":"tx:000123456","from":"wallet:42","to":"wallet:77","amount":2500,"currency":"NGN","pending":false,"timeout_seconds":0,"metadata":{}}'
wrk.headers["Content-Type"] = "application/json"
