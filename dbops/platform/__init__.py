"""What surrounds the database engines: object storage for backups (s3), the backups' state
(backups), Kubernetes (kubernetes/), AWS RDS (rds/) and ElastiCache (elasticache), what the AWS
calls share (aws), and what `dbops check` reads of them (checks). Kubernetes and RDS are shaped
like engines: client (the API calls), data (frozen values), assess (pure judgement). Each module
imports its client library (boto3, kubernetes ...) inside its functions, so importing this
package costs nothing at start-up."""
