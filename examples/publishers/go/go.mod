module example.com/courier-publisher

go 1.20

require github.com/rabbitmq/amqp091-go v1.10.0

require go.uber.org/goleak v1.3.0 // indirect
