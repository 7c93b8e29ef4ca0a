-- wrk: POST 100 bytes (application/octet-stream) to the URL's path.
wrk.method = "POST"
wrk.body = string.rep("x", 100)
wrk.headers["Content-Type"] = "application/octet-stream"
