-- Every order line joined to its customer's Amperity ID, one partition (day) at a time.
SELECT
    order_id,
    amperity_id,
    order_datetime,
    store_id,
    product_category,
    quantity,
    order_amount,
    currency
FROM unified_transactions
WHERE order_datetime >= $partition_start AND order_datetime < $partition_end
