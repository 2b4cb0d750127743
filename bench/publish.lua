-- wrk script for bench/publish.sh: POST a small event to the URL (its query names the channel).
wrk.method = "POST"
wrk.body = "intake test event"
wrk.headers["Content-Type"] = "text/plain"
