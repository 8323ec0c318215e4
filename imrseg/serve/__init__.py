"""`imrseg serve`: the model kept warm behind HTTP for annotation tools and scripts.

`service` owns the predictor and batches requests on one worker thread; `app` is the
FastAPI application (auth, limits, the /v1 routes); `limits` holds the numbers that
keep one request from starving the others."""
