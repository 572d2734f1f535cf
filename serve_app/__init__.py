"""The FastAPI ingress deployment: routes, request/response models, auth dependencies, error mapping."""
