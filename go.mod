module github.com/sqlconflict/sqlconflict

go 1.22

require (
	github.com/DATA-DOG/go-sqlmock v1.5.2
	github.com/go-sql-driver/mysql v1.8.1
	github.com/lib/pq v1.10.9
	github.com/ngrok/sqlmw v0.0.0-20220520173518-97c9c04efc79
	go.uber.org/goleak v1.3.0
)

require filippo.io/edwards25519 v1.1.0 // indirect
