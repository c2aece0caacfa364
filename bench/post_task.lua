-- wrk script: POST /tasks with a JSON body (make bench).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"title":"Review quarterly report","owner_id":"user-456","priority":2,"description":"Benchmark task"}'
