"""What surrounds the database engines: object storage for backups (s3), and later Kubernetes
and RDS. Each module imports its client library (boto3, kubernetes ...) inside its functions,
so importing this package costs nothing at start-up."""
