module github.com/sqlconflict/sqlconflict

go 1.26.8

require (
	filippo.io/edwards25519 v1.2.0 // indirect
	github.com/DATA-DOG/go-sqlmock v1.5.2 // indirect
	github.com/go-sql-driver/mysql v1.10.1 // indirect
	github.com/lib/pq v1.12.3 // indirect
	github.com/ngrok/sqlmw v0.0.0-20220520173518-97c9c04efc79 // indirect
)
